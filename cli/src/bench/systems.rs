//! The systems under test, each behind the same client: creditgate in process and over
//! its HTTP sidecar, a bare axum endpoint, Redis with Lua scripts, naive PostgreSQL;
//! and for the gateway rows, a do-nothing upstream API called directly, through
//! `creditgate proxy` and with the tower layer on its handler.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use creditgate::Meter;
use creditgate_http::limits::ApiLimits;
use creditgate_http::{AppState, router};
use creditgate_tower::{MeteringLayer, OutcomeSource, Route, Routes, TenantSource};
use tower::Layer;

use crate::proxy::Upstream;

use super::workload::{BaselineAmounts, Product, Transaction, tenant_name};

/// One connection (or handle) per client; each client sends one request at a time.
pub enum Client {
    InProcess([Arc<Meter>; 2]),
    /// One HTTP/1.1 keep-alive connection per product's endpoint.
    Http([SendRequest<Full<Bytes>>; 2]),
    /// One keep-alive connection per product's API: each transaction is one call of the
    /// API (through the proxy or the layer: authorize, forward, settle).
    Gateway([SendRequest<Full<Bytes>>; 2]),
    Redis(Box<RedisClient>),
    Postgres(Box<PostgresClient>),
}

impl Client {
    /// Whether the client is a baseline, pricing transactions with the rules itself.
    pub fn is_baseline(&self) -> bool {
        matches!(self, Client::Redis(_) | Client::Postgres(_))
    }

    /// Whether [`Client::authorize`] settles too (one metered call a transaction).
    pub fn settles_itself(&self) -> bool {
        matches!(self, Client::Gateway(_))
    }

    /// Authorizes; answers whether the transaction was admitted.
    pub async fn authorize(&mut self, transaction: &Transaction) -> anyhow::Result<bool> {
        match self {
            Client::InProcess(meters) => Ok(meters[transaction.product.index()]
                .authorize_async(transaction.authorize.clone())
                .await?
                .admitted),
            Client::Http(connections) => {
                let body = serde_json::to_vec(&transaction.authorize)?;
                let answer = post(
                    &mut connections[transaction.product.index()],
                    "/v1/authorize",
                    body,
                )
                .await?;
                Ok(serde_json::from_slice::<AdmittedField>(&answer)?.admitted)
            }
            Client::Gateway(connections) => {
                let body = serde_json::to_vec(&serde_json::json!({
                    "items": transaction.authorize.items,
                }))?;
                let connection = &mut connections[transaction.product.index()];
                let path = format!("/{}", transaction.authorize.operation);
                let headers = [
                    ("x-tenant", transaction.authorize.tenant.as_str()),
                    (
                        "idempotency-key",
                        transaction.settle.transaction_id.as_str(),
                    ),
                ];
                let (status, answer) = send(connection, &path, &headers, body).await?;
                // A refusal (402) is an answer, as `admitted: false` is for the others.
                anyhow::ensure!(
                    status.is_success() || status == hyper::StatusCode::PAYMENT_REQUIRED,
                    "{path} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
                Ok(status.is_success())
            }
            Client::Redis(client) => client.authorize(transaction).await,
            Client::Postgres(client) => client.authorize(transaction).await,
        }
    }

    pub async fn settle(&mut self, transaction: &Transaction) -> anyhow::Result<()> {
        match self {
            Client::InProcess(meters) => {
                meters[transaction.product.index()]
                    .settle_async(transaction.settle.clone())
                    .await?;
                Ok(())
            }
            Client::Http(connections) => {
                let body = serde_json::to_vec(&transaction.settle)?;
                post(
                    &mut connections[transaction.product.index()],
                    "/v1/settle",
                    body,
                )
                .await?;
                Ok(())
            }
            Client::Gateway(_) => anyhow::bail!("a gateway call settles itself"),
            Client::Redis(client) => client.settle(transaction).await,
            Client::Postgres(client) => client.settle(transaction).await,
        }
    }
}

#[derive(Deserialize)]
struct AdmittedField {
    admitted: bool,
}

pub async fn http_connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// POSTs a JSON body with these headers; the answer's status and body.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    sender.ready().await?;
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// GETs `path`; its body, which must come with a 2xx status.
pub async fn get(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> anyhow::Result<Bytes> {
    sender.ready().await?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{path} answered {status}");
    Ok(body)
}

async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Bytes> {
    let (status, body) = send(sender, path, &[], body).await?;
    anyhow::ensure!(
        status.is_success(),
        "{path} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// An HTTP server on a loopback port, on the bench's runtime, stopped when dropped.
pub struct HttpServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpServer {
    pub async fn start(app: axum::Router) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            address,
            stop: Some(stop),
        })
    }

    /// The creditgate sidecar's routes over `meter`, no admin token.
    pub async fn sidecar(meter: Arc<Meter>) -> anyhow::Result<Self> {
        Self::start(router(Arc::new(AppState::new(
            meter,
            None,
            ApiLimits::default(),
        ))))
        .await
    }

    /// The framework ceiling: the same routes, reading the body and doing nothing.
    pub async fn bare_axum() -> anyhow::Result<Self> {
        async fn nothing(_body: Bytes) -> axum::Json<serde_json::Value> {
            axum::Json(serde_json::json!({ "admitted": true }))
        }
        let app = axum::Router::new()
            .route("/v1/authorize", axum::routing::post(nothing))
            .route("/v1/settle", axum::routing::post(nothing));
        Self::start(app).await
    }
}

/// The gateway rows' upstream API: `POST /{operation}` with `{"items": [...]}` answers
/// `{"data": items}` (a record per item) and does nothing else.
pub fn upstream_api() -> axum::Router {
    async fn records(
        axum::Json(body): axum::Json<serde_json::Value>,
    ) -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({ "data": body["items"] }))
    }
    axum::Router::new().route("/{operation}", axum::routing::post(records))
}

/// The routes that meter [`upstream_api`] for `product`: one per operation, the items
/// from the body, the records delivered from the answer, the tenant from `x-tenant`,
/// the transaction id from `idempotency-key`.
pub fn gateway_routes(product: Product) -> Routes {
    product.operations().iter().fold(
        Routes::new(TenantSource::Header("x-tenant".to_owned())),
        |routes, operation| {
            routes.route(
                Route::new(hyper::Method::POST, format!("/{operation}"), *operation)
                    .items("/items", None)
                    .outcome("records", OutcomeSource::Length("/data".to_owned())),
            )
        },
    )
}

impl HttpServer {
    /// [`upstream_api`] with the tower layer on it, metering with `meter`.
    pub async fn metered_api(meter: Arc<Meter>, product: Product) -> anyhow::Result<Self> {
        let layer = MeteringLayer::new(meter, gateway_routes(product))?;
        Self::start(upstream_api().layer(layer)).await
    }

    /// `creditgate proxy` in front of the API at `upstream`, metering with `meter`.
    pub async fn proxy(
        meter: Arc<Meter>,
        product: Product,
        upstream: SocketAddr,
    ) -> anyhow::Result<Self> {
        let layer = MeteringLayer::new(meter, gateway_routes(product))?;
        let client = Upstream::new(format!("http://{upstream}").parse()?)?;
        Self::start(axum::Router::new().fallback_service(layer.layer(client))).await
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Check-and-hold, then charge-and-release, each one Lua script run atomically by
/// Redis. Kept in memory only (as Redis runs here: no AOF, no snapshots).
const REDIS_AUTHORIZE: &str = r"
local available = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if available < amount then return 0 end
redis.call('DECRBY', KEYS[1], amount)
redis.call('SET', KEYS[2], amount, 'PX', ARGV[2])
return 1
";

const REDIS_SETTLE: &str = r"
local held = tonumber(redis.call('GET', KEYS[2]) or '-1')
if held < 0 then return -1 end
redis.call('DEL', KEYS[2])
local charge = math.min(tonumber(ARGV[1]), held)
redis.call('INCRBY', KEYS[1], held - charge)
return charge
";

/// A hold's lifetime in Redis, as SMARTe's (five minutes).
const REDIS_HOLD_TTL_MS: u64 = 5 * 60 * 1000;

pub struct RedisSystem {
    client: redis::Client,
    prefix: String,
    tenants: usize,
}

impl RedisSystem {
    /// Connects and grants every tenant of both products under a fresh key prefix.
    pub async fn start(url: &str, tenants: usize) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot reach Redis at {url}"))?;
        let prefix = format!("creditgate-bench:{}", uuid::Uuid::now_v7());
        for chunk in (0..tenants).collect::<Vec<_>>().chunks(10_000) {
            let mut pipeline = redis::pipe();
            for tenant in chunk {
                for product in Product::ALL {
                    pipeline
                        .set(balance_key(&prefix, product, &tenant_name(*tenant)), GRANT)
                        .ignore();
                }
            }
            pipeline
                .query_async::<()>(&mut connection)
                .await
                .context("granting in Redis")?;
        }
        Ok(Self {
            client,
            prefix,
            tenants,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::Redis(Box::new(RedisClient {
            connection: self.client.get_multiplexed_async_connection().await?,
            prefix: self.prefix.clone(),
            authorize: redis::Script::new(REDIS_AUTHORIZE),
            settle: redis::Script::new(REDIS_SETTLE),
        })))
    }

    /// Deletes the balances this run wrote (holds left open lapse by themselves).
    pub async fn clean(&self) -> anyhow::Result<()> {
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        for chunk in (0..self.tenants).collect::<Vec<_>>().chunks(10_000) {
            let mut unlink = redis::cmd("UNLINK");
            for tenant in chunk {
                for product in Product::ALL {
                    unlink.arg(balance_key(&self.prefix, product, &tenant_name(*tenant)));
                }
            }
            unlink.query_async::<()>(&mut connection).await?;
        }
        Ok(())
    }
}

/// Credits granted to every tenant of every system: enough never to run out.
pub const GRANT: i64 = 1_000_000_000_000;

fn balance_key(prefix: &str, product: Product, tenant: &str) -> String {
    format!("{prefix}:{}:{tenant}", product.index())
}

pub struct RedisClient {
    connection: redis::aio::MultiplexedConnection,
    prefix: String,
    authorize: redis::Script,
    settle: redis::Script,
}

impl RedisClient {
    /// The tenant's balance key and the transaction's hold key.
    fn keys(&self, transaction: &Transaction) -> (String, String) {
        (
            balance_key(
                &self.prefix,
                transaction.product,
                &transaction.authorize.tenant,
            ),
            format!("{}:hold:{}", self.prefix, transaction.settle.transaction_id),
        )
    }

    async fn authorize(&mut self, transaction: &Transaction) -> anyhow::Result<bool> {
        let (balance, hold) = self.keys(transaction);
        let admitted: i64 = self
            .authorize
            .key(balance)
            .key(hold)
            .arg(priced(transaction)?.hold)
            .arg(REDIS_HOLD_TTL_MS)
            .invoke_async(&mut self.connection)
            .await?;
        Ok(admitted == 1)
    }

    async fn settle(&mut self, transaction: &Transaction) -> anyhow::Result<()> {
        let (balance, hold) = self.keys(transaction);
        let charged: i64 = self
            .settle
            .key(balance)
            .key(hold)
            .arg(priced(transaction)?.charge)
            .invoke_async(&mut self.connection)
            .await?;
        anyhow::ensure!(
            charged >= 0,
            "no hold for {}",
            transaction.settle.transaction_id
        );
        Ok(())
    }
}

/// The amounts a baseline needs, priced when the transaction was generated.
fn priced(transaction: &Transaction) -> anyhow::Result<BaselineAmounts> {
    transaction
        .baseline
        .ok_or_else(|| anyhow::anyhow!("a baseline was given an unpriced transaction"))
}

/// What a team writes with PostgreSQL alone: one transaction per authorize (a
/// conditional `UPDATE … WHERE available >= n` and a hold row) and one per settle.
pub struct PostgresSystem {
    config: String,
    schema: String,
}

impl PostgresSystem {
    /// Creates a schema of its own and grants every tenant of both products.
    pub async fn start(config: &str, tenants: usize) -> anyhow::Result<Self> {
        let schema = format!("creditgate_bench_{}", uuid::Uuid::now_v7().simple());
        let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at '{config}'"))?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.accounts (
                     product SMALLINT NOT NULL, tenant TEXT NOT NULL,
                     available BIGINT NOT NULL CHECK (available >= 0),
                     held BIGINT NOT NULL CHECK (held >= 0),
                     PRIMARY KEY (product, tenant));
                 CREATE TABLE {schema}.holds (
                     id TEXT PRIMARY KEY, product SMALLINT NOT NULL, tenant TEXT NOT NULL,
                     amount BIGINT NOT NULL);"
            ))
            .await?;
        let tenants = i64::try_from(tenants)?;
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.accounts
                     SELECT product, 'tenant-' || n, $2, 0
                     FROM generate_series(0, 1) product, generate_series(0, $1::bigint - 1) n"
                ),
                &[&tenants, &GRANT],
            )
            .await?;
        Ok(Self {
            config: config.to_owned(),
            schema,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.config, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let schema = &self.schema;
        let hold = client
            .prepare(&format!(
                "UPDATE {schema}.accounts SET available = available - $3, held = held + $3
                 WHERE product = $1 AND tenant = $2 AND available >= $3"
            ))
            .await?;
        let insert_hold = client
            .prepare(&format!(
                "INSERT INTO {schema}.holds (id, product, tenant, amount) VALUES ($1, $2, $3, $4)"
            ))
            .await?;
        let take_hold = client
            .prepare(&format!(
                "DELETE FROM {schema}.holds WHERE id = $1 RETURNING product, tenant, amount"
            ))
            .await?;
        let charge = client
            .prepare(&format!(
                "UPDATE {schema}.accounts SET held = held - $3, available = available + $3 - $4
                 WHERE product = $1 AND tenant = $2"
            ))
            .await?;
        Ok(Client::Postgres(Box::new(PostgresClient {
            client,
            hold,
            insert_hold,
            take_hold,
            charge,
        })))
    }

    pub async fn clean(&self) -> anyhow::Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.config, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await?;
        Ok(())
    }
}

pub struct PostgresClient {
    client: tokio_postgres::Client,
    hold: tokio_postgres::Statement,
    insert_hold: tokio_postgres::Statement,
    take_hold: tokio_postgres::Statement,
    charge: tokio_postgres::Statement,
}

impl PostgresClient {
    async fn authorize(&mut self, transaction: &Transaction) -> anyhow::Result<bool> {
        let hold = priced(transaction)?.hold;
        let product = transaction.product.index() as i16;
        let tenant = &transaction.authorize.tenant;
        let database = self.client.transaction().await?;
        let admitted = database
            .execute(&self.hold, &[&product, tenant, &hold])
            .await?
            == 1;
        if admitted {
            database
                .execute(
                    &self.insert_hold,
                    &[&transaction.settle.transaction_id, &product, tenant, &hold],
                )
                .await?;
        }
        database.commit().await?;
        Ok(admitted)
    }

    async fn settle(&mut self, transaction: &Transaction) -> anyhow::Result<()> {
        let charge = priced(transaction)?.charge;
        let database = self.client.transaction().await?;
        let hold = database
            .query_one(&self.take_hold, &[&transaction.settle.transaction_id])
            .await?;
        let (product, tenant, held): (i16, String, i64) = (hold.get(0), hold.get(1), hold.get(2));
        database
            .execute(&self.charge, &[&product, &tenant, &held, &charge.min(held)])
            .await?;
        database.commit().await?;
        Ok(())
    }
}
