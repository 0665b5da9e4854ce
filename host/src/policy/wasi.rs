//! The two WASI interfaces a policy is answered rather than trapped on, because guest
//! runtimes read them as they start (CPython reads both; docs/policy-authors.md):
//!
//! - `wasi:cli/environment`: no variables, no arguments, no working directory;
//! - `wasi:random/{random, insecure, insecure-seed}`: bytes from a ChaCha stream with a
//!   fixed key, restarted at every instantiation.
//!
//! Neither gives a policy anything it could decide differently by: the environment is
//! always empty, and the "random" bytes are the same sequence in every instance on
//! every replica. A policy that draws them per call still answers the same request two
//! ways within one instance, which the determinism probe refuses at load. Every other
//! WASI import stays linked to a trap.

use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use wasmtime::StoreContextMut;
use wasmtime::component::{Component, Linker};

use super::component::HostLimitExceeded;

/// The stream's key: fixed, so that every instance draws the same bytes.
const ENTROPY_KEY: [u8; 32] = *b"creditgate policy: no randomness";
/// Bytes one `get-random-bytes` (or `get-insecure-random-bytes`) call may ask for.
pub const RANDOM_BYTES_PER_CALL_MAX: u64 = 1 << 20;
/// The contract's WASI version line: the interfaces below as WASI 0.2 defines them.
const WASI_VERSION_PREFIX: &str = "0.2.";

/// What a store gives the answers: its instance's own byte stream.
pub trait GuestEntropy {
    fn entropy(&mut self) -> &mut ChaCha12Rng;
}

/// A fresh stream, for a new instance.
pub fn entropy() -> ChaCha12Rng {
    ChaCha12Rng::from_seed(ENTROPY_KEY)
}

/// Defines the answered interfaces under each name (with its version) that `component`
/// imports; call before the remaining imports are linked to traps.
pub fn link<T: GuestEntropy + 'static>(
    linker: &mut Linker<T>,
    component: &Component,
) -> wasmtime::Result<()> {
    let engine = linker.engine().clone();
    let names: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    for name in names {
        let Some((interface, version)) = name.split_once('@') else {
            continue;
        };
        if !version.starts_with(WASI_VERSION_PREFIX) {
            continue;
        }
        let mut instance = match interface {
            "wasi:cli/environment"
            | "wasi:random/random"
            | "wasi:random/insecure"
            | "wasi:random/insecure-seed" => linker.instance(&name)?,
            _ => continue,
        };
        match interface {
            "wasi:cli/environment" => {
                instance.func_wrap("get-environment", |_: StoreContextMut<'_, T>, (): ()| {
                    Ok((Vec::<(String, String)>::new(),))
                })?;
                instance.func_wrap("get-arguments", |_: StoreContextMut<'_, T>, (): ()| {
                    Ok((Vec::<String>::new(),))
                })?;
                instance.func_wrap("initial-cwd", |_: StoreContextMut<'_, T>, (): ()| {
                    Ok((None::<String>,))
                })?;
            }
            "wasi:random/random" => {
                instance.func_wrap("get-random-bytes", random_bytes::<T>)?;
                instance.func_wrap("get-random-u64", random_u64::<T>)?;
            }
            "wasi:random/insecure" => {
                instance.func_wrap("get-insecure-random-bytes", random_bytes::<T>)?;
                instance.func_wrap("get-insecure-random-u64", random_u64::<T>)?;
            }
            _ => {
                instance.func_wrap(
                    "insecure-seed",
                    |mut store: StoreContextMut<'_, T>, (): ()| {
                        let entropy = store.data_mut().entropy();
                        Ok(((entropy.next_u64(), entropy.next_u64()),))
                    },
                )?;
            }
        }
    }
    Ok(())
}

fn random_bytes<T: GuestEntropy>(
    mut store: StoreContextMut<'_, T>,
    (len,): (u64,),
) -> wasmtime::Result<(Vec<u8>,)> {
    if len > RANDOM_BYTES_PER_CALL_MAX {
        return Err(HostLimitExceeded(format!(
            "{len} random bytes asked for in one call; at most {RANDOM_BYTES_PER_CALL_MAX}"
        ))
        .into());
    }
    let mut bytes = vec![0; usize::try_from(len)?];
    store.data_mut().entropy().fill_bytes(&mut bytes);
    Ok((bytes,))
}

fn random_u64<T: GuestEntropy>(
    mut store: StoreContextMut<'_, T>,
    (): (),
) -> wasmtime::Result<(u64,)> {
    Ok((store.data_mut().entropy().next_u64(),))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instance_draws_the_same_bytes() {
        let (mut first, mut second) = (entropy(), entropy());
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        first.fill_bytes(&mut a);
        second.fill_bytes(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 64]);
    }
}
