//! A FUSE file system that forgets whatever was never fsynced: crash tests for the
//! promise "durable before acknowledged".
//!
//! `kill -9` proves nothing about fsync: the page cache outlives the process, so a
//! server that never synced would pass. [`LossyFs`] keeps every file in memory twice,
//! as last synced and as currently written. Reads and writes (through `write`,
//! `truncate` or a shared mapping) see the current contents; `fsync` or `fdatasync` of
//! a file makes them the synced ones. [`LossyFs::crash`] is a power cut: every file
//! goes back to its synced contents, and a file never synced to empty.
//!
//! Namespace operations (create, mkdir, rename, unlink, rmdir) are durable at once: a
//! file created and never synced is still there after a crash, empty. A real file
//! system may lose the name too (the ledger syncs the directory of its log); this
//! model keeps its harm to file contents, which is what a missing fsync before
//! acknowledging loses. `fsync` of a directory is accepted and changes nothing. File locks are the
//! kernel's (the file system does not ask for them), which is what SQLite needs from
//! one machine.
//!
//! Fault injection: after [`LossyFs::fail_syncs`], every `fsync` or `fdatasync` of a
//! file answers `EIO` and syncs nothing (the file's synced contents stay as they were),
//! as a dying disk would; [`LossyFs::heal_syncs`] makes them work again, and from then
//! on a sync makes whatever the file holds durable, including what was written while
//! they failed. Directory syncs never fail.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// The mounted file system; unmounted when dropped.
pub struct LossyFs {
    state: Arc<Mutex<State>>,
    notifier: Notifier,
    session: Option<BackgroundSession>,
    // Declared last: removed after the unmount.
    mount_point: tempfile::TempDir,
}

impl LossyFs {
    /// Mounts an empty file system on a fresh temporary directory, served by a
    /// background thread of this process. Needs `/dev/fuse` and root (or `fusermount3`).
    pub fn mount() -> std::io::Result<Self> {
        let mount_point = tempfile::Builder::new().prefix("lossy-fs-").tempdir()?;
        let owner = std::fs::metadata(mount_point.path())?;
        let state = Arc::new(Mutex::new(State::new(owner.uid(), owner.gid())));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lossy".to_owned()),
            MountOption::Subtype("lossy".to_owned()),
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(
            Server {
                state: Arc::clone(&state),
            },
            mount_point.path(),
            &config,
        )?;
        Ok(Self {
            state,
            notifier: session.notifier(),
            session: Some(session),
            mount_point,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// From now on every `fsync`/`fdatasync` of a file fails with `EIO` and makes
    /// nothing durable, until [`LossyFs::heal_syncs`].
    pub fn fail_syncs(&self) {
        lock(&self.state).syncs_fail = true;
    }

    /// Syncs work again; returns how many were refused since [`LossyFs::fail_syncs`].
    pub fn heal_syncs(&self) -> u64 {
        let mut state = lock(&self.state);
        state.syncs_fail = false;
        std::mem::take(&mut state.syncs_refused)
    }

    /// A power cut: every file loses whatever was written since it was last synced.
    /// Only for a file system nobody has open (kill the processes using it first);
    /// waits a little for the kernel to report the files of a killed process closed,
    /// then panics if any is still open.
    pub fn crash(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let files = loop {
            {
                let mut state = lock(&self.state);
                let open = state.open_files();
                if open == 0 {
                    break state.crash();
                }
                assert!(
                    Instant::now() < deadline,
                    "crash() with {open} file(s) still open on the lossy file system"
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The kernel's page cache must not serve what the "disk" lost. (Not under the
        // lock: invalidating may write dirty mapped pages back through this server.)
        for ino in files {
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && session.umount_and_join().is_err()
        {
            // Still busy (a test failed with a process on it): detach it lazily.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.mount_point.path())
                .status();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const BLOCK: usize = 4096;

/// A file's bytes in shared blocks: a snapshot (`clone`) is cheap, and writes copy
/// only the blocks they touch. Bytes past `len` are always zero.
#[derive(Clone, Default)]
struct Contents {
    blocks: Vec<Arc<[u8; BLOCK]>>,
    len: u64,
}

impl Contents {
    fn read(&self, offset: u64, size: u32) -> Vec<u8> {
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (block, within) = ((at / BLOCK as u64) as usize, (at % BLOCK as u64) as usize);
            let take = (BLOCK - within).min((end - at) as usize);
            out.extend_from_slice(&self.blocks[block][within..within + take]);
            at += take as u64;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        self.grow_blocks(end);
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (block, within) = ((at / BLOCK as u64) as usize, (at % BLOCK as u64) as usize);
            let take = (BLOCK - within).min(data.len() - done);
            Arc::make_mut(&mut self.blocks[block])[within..within + take]
                .copy_from_slice(&data[done..done + take]);
            done += take;
        }
        self.len = self.len.max(end);
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            self.blocks.truncate(len.div_ceil(BLOCK as u64) as usize);
            let within = (len % BLOCK as u64) as usize;
            if within != 0
                && let Some(last) = self.blocks.last_mut()
            {
                Arc::make_mut(last)[within..].fill(0);
            }
        } else {
            self.grow_blocks(len);
        }
        self.len = len;
    }

    fn grow_blocks(&mut self, len: u64) {
        let needed = len.div_ceil(BLOCK as u64) as usize;
        while self.blocks.len() < needed {
            self.blocks.push(Arc::new([0; BLOCK]));
        }
    }
}

enum Body {
    File {
        current: Contents,
        synced: Contents,
        open: u32,
    },
    Directory {
        entries: BTreeMap<OsString, u64>,
        parent: u64,
    },
}

struct Node {
    body: Body,
    perm: u16,
    nlink: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Set by [`LossyFs::fail_syncs`]: file syncs answer `EIO`.
    syncs_fail: bool,
    syncs_refused: u64,
}

/// Every answer is fresh: after a crash the kernel must ask again.
const TTL: Duration = Duration::ZERO;

impl State {
    fn new(uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        let root = Node {
            body: Body::Directory {
                entries: BTreeMap::new(),
                parent: INodeNo::ROOT.0,
            },
            perm: 0o755,
            nlink: 2,
            uid,
            gid,
            mtime: now,
            ctime: now,
        };
        Self {
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next_ino: INodeNo::ROOT.0 + 1,
            syncs_fail: false,
            syncs_refused: 0,
        }
    }

    fn open_files(&self) -> u32 {
        self.nodes
            .values()
            .map(|node| match &node.body {
                Body::File { open, .. } => *open,
                Body::Directory { .. } => 0,
            })
            .sum()
    }

    /// Reverts every file to its synced contents; returns the files.
    fn crash(&mut self) -> Vec<u64> {
        let mut files = Vec::new();
        for (ino, node) in &mut self.nodes {
            if let Body::File {
                current, synced, ..
            } = &mut node.body
            {
                *current = synced.clone();
                files.push(*ino);
            }
        }
        files
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size) = match &node.body {
            Body::File { current, .. } => (FileType::RegularFile, current.len),
            Body::Directory { .. } => (FileType::Directory, 0),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm: node.perm,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn entries_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::Directory { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries_mut(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Contents, &mut Contents, &mut u32), Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::File {
                current,
                synced,
                open,
            } => Ok((current, synced, open)),
            Body::Directory { .. } => Err(Errno::EISDIR),
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            node.mtime = now;
            node.ctime = now;
        }
    }

    fn make(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        directory: bool,
    ) -> Result<FileAttr, Errno> {
        if self.entries_mut(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        let body = if directory {
            Body::Directory {
                entries: BTreeMap::new(),
                parent,
            }
        } else {
            Body::File {
                current: Contents::default(),
                synced: Contents::default(),
                open: 0,
            }
        };
        self.nodes.insert(
            ino,
            Node {
                body,
                perm: (mode & 0o7777) as u16,
                nlink: if directory { 2 } else { 1 },
                uid: req.uid(),
                gid: req.gid(),
                mtime: now,
                ctime: now,
            },
        );
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        if directory && let Some(node) = self.nodes.get_mut(&parent) {
            node.nlink += 1;
        }
        self.touch(parent);
        self.attr(ino)
    }

    /// Drops one name of `ino`; forgets the node once it has none and nobody has it open.
    fn unlinked(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.nlink = node.nlink.saturating_sub(1);
        node.ctime = SystemTime::now();
        self.forget_if_gone(ino);
    }

    fn forget_if_gone(&mut self, ino: u64) {
        if let Some(Node {
            nlink: 0,
            body: Body::File { open: 0, .. },
            ..
        }) = self.nodes.get(&ino)
        {
            self.nodes.remove(&ino);
        }
    }

    fn remove(&mut self, parent: u64, name: &OsStr, directory: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        match (&self.nodes.get(&ino).ok_or(Errno::ENOENT)?.body, directory) {
            (Body::Directory { entries, .. }, true) if !entries.is_empty() => {
                return Err(Errno::ENOTEMPTY);
            }
            (Body::Directory { .. }, true) | (Body::File { .. }, false) => {}
            (Body::Directory { .. }, false) => return Err(Errno::EISDIR),
            (Body::File { .. }, true) => return Err(Errno::ENOTDIR),
        }
        self.entries_mut(parent)?.remove(name);
        self.touch(parent);
        if directory {
            self.nodes.remove(&ino);
            if let Some(node) = self.nodes.get_mut(&parent) {
                node.nlink = node.nlink.saturating_sub(1);
            }
        } else {
            self.unlinked(ino);
        }
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        let moving_directory = matches!(
            self.nodes.get(&ino).map(|node| &node.body),
            Some(Body::Directory { .. })
        );
        if let Ok(target) = self.child(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            self.remove(new_parent, new_name, moving_directory)?;
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        if moving_directory && parent != new_parent {
            if let Some(Node {
                body: Body::Directory { parent: above, .. },
                ..
            }) = self.nodes.get_mut(&ino)
            {
                *above = new_parent;
            }
            if let Some(node) = self.nodes.get_mut(&parent) {
                node.nlink = node.nlink.saturating_sub(1);
            }
            if let Some(node) = self.nodes.get_mut(&new_parent) {
                node.nlink += 1;
            }
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }
}

/// The FUSE side: every call takes the state's lock for its own short moment.
struct Server {
    state: Arc<Mutex<State>>,
}

impl Server {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn reply_entry(reply: ReplyEntry, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(error) => reply.error(error),
    }
}

fn reply_attr(reply: ReplyAttr, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(error) => reply.error(error),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(error),
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;

impl fuser::Filesystem for Server {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let attr = state.child(parent.0, name).and_then(|ino| state.attr(ino));
        reply_entry(reply, attr);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.state().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            if let Some(size) = size {
                state.file_mut(ino.0)?.0.set_len(size);
                state.touch(ino.0);
            }
            let node = state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            node.uid = uid.unwrap_or(node.uid);
            node.gid = gid.unwrap_or(node.gid);
            match mtime {
                Some(TimeOrNow::SpecificTime(at)) => node.mtime = at,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            node.ctime = SystemTime::now();
            state.attr(ino.0)
        })();
        reply_attr(reply, result);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & S_IFMT != S_IFREG && mode & S_IFMT != 0 {
            return reply.error(Errno::EPERM);
        }
        reply_entry(reply, self.state().make(req, parent.0, name, mode, false));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.state().make(req, parent.0, name, mode, true));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        reply_empty(
            reply,
            self.state().rename(parent.0, name, newparent.0, newname),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().file_mut(ino.0) {
            Ok((_, _, open)) => {
                *open += 1;
                // No FOPEN_KEEP_CACHE: every open drops the kernel's cached pages.
                reply.opened(FileHandle(0), FopenFlags::empty());
            }
            Err(error) => reply.error(error),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let created = state
            .make(req, parent.0, name, mode, false)
            .and_then(|attr| {
                *state.file_mut(attr.ino.0)?.2 += 1;
                Ok(attr)
            });
        match created {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(error) => reply.error(error),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().file_mut(ino.0) {
            Ok((current, _, _)) => reply.data(&current.read(offset, size)),
            Err(error) => reply.error(error),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        match state.file_mut(ino.0) {
            Ok((current, _, _)) => {
                current.write(offset, data);
                state.touch(ino.0);
                reply.written(data.len() as u32);
            }
            Err(error) => reply.error(error),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Ok((_, _, open)) = state.file_mut(ino.0) {
            *open = open.saturating_sub(1);
        }
        state.forget_if_gone(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel has already written back the file's dirty pages; whatever this
        // file holds now is on "disk", unless syncs fail.
        let mut state = self.state();
        let result = if state.syncs_fail {
            state.syncs_refused += 1;
            Err(Errno::EIO)
        } else {
            state
                .file_mut(ino.0)
                .map(|(current, synced, _)| *synced = current.clone())
        };
        reply_empty(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().entries_mut(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(error) => reply.error(error),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(Node {
            body: Body::Directory { entries, parent },
            ..
        }) = state.nodes.get(&ino.0)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let listing = [
            (ino.0, FileType::Directory, OsString::from(".")),
            (*parent, FileType::Directory, OsString::from("..")),
        ]
        .into_iter()
        .chain(entries.iter().map(|(name, child)| {
            let kind = match state.nodes.get(child).map(|node| &node.body) {
                Some(Body::Directory { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (*child, kind, name.clone())
        }));
        for (index, (child, kind, name)) in listing.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable at once (see the module's documentation).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            1 << 24,
            1 << 24,
            1 << 24,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            0,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.state().attr(ino.0).map(|_| ()));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let result = self.state().file_mut(ino.0).map(|(current, _, _)| {
            let end = offset.saturating_add(length);
            if end > current.len {
                current.set_len(end);
            }
        });
        reply_empty(reply, result);
    }
}

#[test]
fn the_lossy_fs_keeps_synced_contents_and_loses_the_rest_in_a_crash() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let fs = LossyFs::mount().expect("mount the lossy file system");
    let synced = fs.path().join("synced");
    let unsynced = fs.path().join("never-synced");
    {
        let mut file = std::fs::File::create(&synced).unwrap();
        file.write_all(&vec![b'a'; 10_000]).unwrap();
        file.sync_data().unwrap();
        file.seek(SeekFrom::Start(5_000)).unwrap();
        file.write_all(b"lost").unwrap();
        file.set_len(9_000).unwrap();
        std::fs::write(&unsynced, b"lost too").unwrap();
        std::fs::create_dir(fs.path().join("dir")).unwrap();
        std::fs::rename(&unsynced, fs.path().join("dir/moved")).unwrap();
        let mut seen = String::new();
        std::fs::File::open(&synced)
            .unwrap()
            .read_to_string(&mut seen)
            .unwrap();
        assert_eq!(seen.len(), 9_000);
        assert_eq!(&seen[5_000..5_004], "lost");
    }
    fs.crash();
    assert_eq!(std::fs::read(&synced).unwrap(), vec![b'a'; 10_000]);
    assert_eq!(std::fs::read(fs.path().join("dir/moved")).unwrap(), b"");
    let names: Vec<_> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dir", "synced"]);
    std::fs::remove_file(&synced).unwrap();
    std::fs::remove_dir_all(fs.path().join("dir")).unwrap();
    assert_eq!(std::fs::read_dir(fs.path()).unwrap().count(), 0);
}

#[test]
fn a_failing_sync_answers_eio_and_makes_nothing_durable() {
    use std::io::Write;
    let fs = LossyFs::mount().expect("mount the lossy file system");
    let path = fs.path().join("file");
    {
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"kept").unwrap();
        file.sync_data().unwrap();
        fs.fail_syncs();
        file.write_all(b" lost").unwrap();
        let error = file.sync_data().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(5), "not EIO: {error}");
        assert!(file.sync_all().is_err());
        assert_eq!(fs.heal_syncs(), 2);
    }
    fs.crash();
    assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b" and this").unwrap();
        file.sync_data().unwrap();
    }
    fs.crash();
    assert_eq!(std::fs::read(&path).unwrap(), b"kept and this");
}
