//! A bounded pool of PostgreSQL connections, each with the store's schema
//! on its `search_path`. A transaction needs a connection of its own
//! (tokio-postgres interleaves the statements of concurrent callers on
//! one connection), so every caller checks one out for its whole work.

use std::sync::{Arc, Mutex};

use rtokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

/// What failed talking to PostgreSQL.
#[derive(Debug)]
pub struct PgError(pub String);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PgError {}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        // The server's own message says what went wrong; the client's
        // Display is often just "db error".
        match e.as_db_error() {
            Some(db) => PgError(format!("{}: {}", db.code().code(), db.message())),
            None => PgError(e.to_string()),
        }
    }
}

/// Cheap to clone: clones share the connections.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    conninfo: String,
    schema: String,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A checked-out connection; back to the pool on drop if it is
/// [`Conn::reusable`] and did not break.
pub(crate) struct Conn {
    pool: Pool,
    client: Option<Client>,
    /// See [`Conn::set_reusable`].
    reusable: bool,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// `false` while the session is in a state the next user must not
    /// inherit (a transaction still open), `true` once it is clean again.
    /// A `Conn` dropped while not reusable closes instead of going back.
    pub(crate) fn set_reusable(&mut self, reusable: bool) {
        self.reusable = reusable;
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.reusable
            && !client.is_closed()
        {
            self.pool.inner.idle.lock().unwrap().push(client);
        }
    }
}

impl Pool {
    pub(crate) fn new(conninfo: &str, schema: &str, size: usize) -> Result<Pool, PgError> {
        // The schema is spliced into SQL (identifiers cannot be parameters).
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(PgError(format!(
                "schema {schema:?}: use lowercase letters, digits and _"
            )));
        }
        Ok(Pool {
            inner: Arc::new(Shared {
                conninfo: conninfo.to_owned(),
                schema: schema.to_owned(),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(size)),
            }),
        })
    }

    pub(crate) fn schema(&self) -> &str {
        &self.inner.schema
    }

    pub(crate) async fn get(&self) -> Result<Conn, PgError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let reused = {
            let mut idle = self.inner.idle.lock().unwrap();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            pool: self.clone(),
            client: Some(client),
            reusable: true,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) = tokio_postgres::connect(&self.inner.conninfo, NoTls).await?;
        rtokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("postgres connection ended: {e}");
            }
        });
        client
            .batch_execute(&format!("SET search_path TO {}", self.inner.schema))
            .await?;
        Ok(client)
    }
}
