//! The local S3 servers `scripts/s3-up` starts, as the tests see them.
//!
//! Two independent S3-compatible servers run on the loopback interface:
//! moto in server mode (`scripts/s3-up`, <http://127.0.0.1:9401>) and
//! SeaweedFS's S3 gateway (`scripts/s3-up --seaweedfs`,
//! <http://127.0.0.1:9402>). Both take the same test-only credentials
//! ([`ACCESS_KEY_ID`], [`SECRET_ACCESS_KEY`], [`REGION`]) and hold the
//! bucket [`BUCKET`].
//!
//! Owns: each server's endpoint (and the variable that moves it), its
//! credentials, the environment a job needs to reach it, fresh prefixes so
//! that tests never share objects, object_store clients for it, and a
//! check that fails with the command to run when a server is not up.
//!
//! Does not own: starting or stopping the servers (`scripts/s3-up`, see
//! docs/s3-servers.md), what a server enforces (the tests in
//! `tests/conditional_writes.rs` find that out), faults between a client
//! and a server ([`crate::proxy`]), or the checkpoint protocol
//! (`exactly::storage`).
//!
//! ```no_run
//! use exactly_s3_tools::servers::Server;
//!
//! for server in Server::ALL {
//!     // Fails with "moto is not answering on http://127.0.0.1:9401 (…):
//!     // start it with `scripts/s3-up`" when it is down.
//!     server.check().unwrap_or_else(|missing| panic!("{missing}"));
//! }
//! ```

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

/// The bucket `scripts/s3-up` creates on each server, and every test uses.
///
/// ```
/// assert_eq!(exactly_s3_tools::servers::BUCKET, "exactly-tests");
/// ```
pub const BUCKET: &str = "exactly-tests";

/// The test-only access key id both servers accept.
///
/// ```
/// assert_eq!(exactly_s3_tools::servers::ACCESS_KEY_ID, "exactly-test");
/// ```
pub const ACCESS_KEY_ID: &str = "exactly-test";

/// The test-only secret access key both servers accept. Not a secret: the
/// servers listen on the loopback interface only.
///
/// ```
/// assert_eq!(exactly_s3_tools::servers::SECRET_ACCESS_KEY, "exactly-test-secret");
/// ```
pub const SECRET_ACCESS_KEY: &str = "exactly-test-secret";

/// The region the requests are signed for.
///
/// ```
/// assert_eq!(exactly_s3_tools::servers::REGION, "us-east-1");
/// ```
pub const REGION: &str = "us-east-1";

/// How long [`Server::check`] waits for a connection, and for the listing
/// that follows.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A local S3 server `scripts/s3-up` starts.
///
/// ```
/// use exactly_s3_tools::servers::Server;
///
/// assert_eq!(Server::SeaweedFs.name(), "SeaweedFS");
/// assert_eq!(Server::SeaweedFs.start_command(), "scripts/s3-up --seaweedfs");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// moto in server mode: an in-memory S3 (and more) written in Python.
    /// `scripts/s3-up`, on <http://127.0.0.1:9401>.
    Moto,
    /// SeaweedFS: master, volume server, filer and S3 gateway in one
    /// `weed server`, data on disk. `scripts/s3-up --seaweedfs`, on
    /// <http://127.0.0.1:9402>.
    SeaweedFs,
}

impl Server {
    /// Both servers, moto first.
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// let names: Vec<_> = Server::ALL.iter().map(Server::name).collect();
    /// assert_eq!(names, ["moto", "SeaweedFS"]);
    /// ```
    pub const ALL: [Server; 2] = [Server::Moto, Server::SeaweedFs];

    /// The server's name, for messages: "moto" or "SeaweedFS".
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// assert_eq!(Server::Moto.name(), "moto");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Server::Moto => "moto",
            Server::SeaweedFs => "SeaweedFS",
        }
    }

    /// The variable that moves the server's endpoint; `scripts/s3-up` reads
    /// it too.
    fn endpoint_variable(&self) -> &'static str {
        match self {
            Server::Moto => "EXACTLY_S3_MOTO_ENDPOINT",
            Server::SeaweedFs => "EXACTLY_S3_SEAWEEDFS_ENDPOINT",
        }
    }

    fn default_endpoint(&self) -> &'static str {
        match self {
            Server::Moto => "http://127.0.0.1:9401",
            Server::SeaweedFs => "http://127.0.0.1:9402",
        }
    }

    /// The server's S3 endpoint, without a trailing slash:
    /// `EXACTLY_S3_MOTO_ENDPOINT` or `EXACTLY_S3_SEAWEEDFS_ENDPOINT` when
    /// set and not empty, else <http://127.0.0.1:9401> (moto) or
    /// <http://127.0.0.1:9402> (SeaweedFS).
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// if std::env::var_os("EXACTLY_S3_MOTO_ENDPOINT").is_none() {
    ///     assert_eq!(Server::Moto.endpoint(), "http://127.0.0.1:9401");
    /// }
    /// ```
    pub fn endpoint(&self) -> String {
        match std::env::var(self.endpoint_variable()) {
            Ok(value) if !value.trim().is_empty() => value.trim().trim_end_matches('/').to_string(),
            _ => self.default_endpoint().to_string(),
        }
    }

    /// The command that starts the server, from the workspace's root.
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// assert_eq!(Server::Moto.start_command(), "scripts/s3-up");
    /// ```
    pub fn start_command(&self) -> &'static str {
        match self {
            Server::Moto => "scripts/s3-up",
            Server::SeaweedFs => "scripts/s3-up --seaweedfs",
        }
    }

    /// Checks that the server answers: a TCP connection to its endpoint,
    /// then a signed listing of [`BUCKET`] (which fails if the bucket is
    /// missing or the credentials are refused). The error's message says
    /// how to start the server. Blocks for at most about 10 s; runs its
    /// request on a thread of its own, so it may be called from inside an
    /// async runtime as well as outside one.
    ///
    /// ```no_run
    /// use exactly_s3_tools::servers::Server;
    ///
    /// if let Err(missing) = Server::SeaweedFs.check() {
    ///     // "SeaweedFS is not answering on http://127.0.0.1:9402 (connection
    ///     // refused): start it with `scripts/s3-up --seaweedfs`"
    ///     eprintln!("{missing}");
    /// }
    /// ```
    pub fn check(&self) -> Result<(), ServerMissing> {
        let endpoint = self.endpoint();
        let missing = |cause: String| ServerMissing {
            server: *self,
            endpoint: endpoint.clone(),
            cause,
        };
        connect(&endpoint).map_err(missing)?;
        let client = self.client();
        std::thread::scope(|scope| {
            scope
                .spawn(|| list_bucket(client))
                .join()
                .unwrap_or_else(|_| Err("the check's thread panicked".to_string()))
        })
        .map_err(missing)
    }

    /// The environment a job needs to reach this server with object_store's
    /// `AmazonS3Builder::from_env` (or an AWS SDK): `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and
    /// `AWS_ALLOW_HTTP`.
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// let env = Server::Moto.aws_env();
    /// assert!(env.contains(&("AWS_ALLOW_HTTP", "true".to_string())));
    /// assert!(env.contains(&("AWS_ENDPOINT_URL", Server::Moto.endpoint())));
    /// ```
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// An `s3://exactly-tests/<prefix>` URL (no trailing slash) under a
    /// prefix no other call returns: the server, the test's name (reduced
    /// to letters, digits, `-` and `_`), the time in nanoseconds, the
    /// process id and a counter. Tests that write only under their own
    /// prefix never share objects, across runs and processes too.
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// let a = Server::Moto.fresh_url("restore after crash");
    /// let b = Server::Moto.fresh_url("restore after crash");
    /// assert!(a.starts_with("s3://exactly-tests/tests/moto/restore-after-crash-"));
    /// assert_ne!(a, b);
    /// ```
    pub fn fresh_url(&self, test: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let server = match self {
            Server::Moto => "moto",
            Server::SeaweedFs => "seaweedfs",
        };
        format!(
            "s3://{BUCKET}/tests/{server}/{test}-{nanos}-{}-{count}",
            std::process::id()
        )
    }

    /// An object_store client for [`BUCKET`] on this server: path-style
    /// requests, plain HTTP allowed, the test credentials, conditional puts
    /// with `If-Match` / `If-None-Match`, and no retries, so that every
    /// answer a test sees is the server's answer to one request. Connects
    /// to nothing until used.
    ///
    /// # Panics
    ///
    /// If object_store rejects the configuration, which it does not for an
    /// `http://` or `https://` endpoint.
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// let store = Server::SeaweedFs.client();
    /// assert!(store.to_string().contains("exactly-tests"));
    /// ```
    pub fn client(&self) -> AmazonS3 {
        self.client_via(&self.endpoint())
    }

    /// The same client as [`client`](Server::client), but sending its
    /// requests to `endpoint` (a fault proxy's, which forwards them to this
    /// server): same bucket, same credentials, same signatures.
    ///
    /// # Panics
    ///
    /// As [`client`](Server::client).
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// let through_proxy = Server::Moto.client_via("http://127.0.0.1:40123");
    /// # drop(through_proxy);
    /// ```
    pub fn client_via(&self, endpoint: &str) -> AmazonS3 {
        self.builder_via(endpoint)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
            .unwrap_or_else(|e| panic!("object_store rejected the client for {endpoint}: {e}"))
    }

    /// The builder behind [`client_via`](Server::client_via), for clients
    /// that change more (retries, timeouts, the bucket): `endpoint`,
    /// [`BUCKET`], the test credentials, path-style requests, plain HTTP
    /// and conditional puts. Client options given later replace the plain
    /// HTTP setting: give `ClientOptions::with_allow_http(true)` again.
    ///
    /// ```
    /// use exactly_s3_tools::servers::Server;
    ///
    /// let store = Server::Moto.builder_via(&Server::Moto.endpoint()).build().unwrap();
    /// # drop(store);
    /// ```
    pub fn builder_via(&self, endpoint: &str) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
    }
}

impl fmt::Display for Server {
    /// The server's [`name`](Server::name).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A server that does not answer, and how to start it.
///
/// ```
/// use exactly_s3_tools::servers::{Server, ServerMissing};
///
/// let missing = ServerMissing {
///     server: Server::Moto,
///     endpoint: "http://127.0.0.1:9401".to_string(),
///     cause: "connection refused".to_string(),
/// };
/// assert_eq!(
///     missing.to_string(),
///     "moto is not answering on http://127.0.0.1:9401 (connection refused): start it with `scripts/s3-up`"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{} is not answering on {endpoint} ({cause}): start it with `{}`", server.name(), server.start_command())]
pub struct ServerMissing {
    /// The server that was checked.
    pub server: Server,
    /// The endpoint it was looked for on.
    pub endpoint: String,
    /// What failed: the connection, or the listing of the bucket.
    pub cause: String,
}

/// Connects to the endpoint's host and port and hangs up.
fn connect(endpoint: &str) -> Result<(), String> {
    let authority = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| "the endpoint is not an http:// or https:// URL".to_string())?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let default_port = if endpoint.starts_with("https://") {
        443
    } else {
        80
    };
    let addresses = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        authority.to_socket_addrs()
    } else {
        (authority, default_port).to_socket_addrs()
    }
    .map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    let mut last = format!("{authority} resolves to no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, CHECK_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("connecting to {address}: {e}"),
        }
    }
    Err(last)
}

/// Lists one (absent) prefix of the bucket with a signed request, on a
/// runtime of its own.
fn list_bucket(client: AmazonS3) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the check: {e}"))?;
    let prefix = Path::from("exactly-s3-tools-check");
    runtime.block_on(async {
        match tokio::time::timeout(CHECK_TIMEOUT, client.list_with_delimiter(Some(&prefix))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("listing bucket {BUCKET} failed: {e}")),
            Err(_) => Err(format!(
                "listing bucket {BUCKET} got no answer within {CHECK_TIMEOUT:?}"
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_is_reported_with_the_command_that_starts_the_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let cause = connect(&endpoint).unwrap_err();
        assert!(cause.contains("refused"), "{cause}");
        let missing = ServerMissing {
            server: Server::SeaweedFs,
            endpoint: endpoint.clone(),
            cause,
        };
        let message = missing.to_string();
        assert!(
            message.starts_with(&format!("SeaweedFS is not answering on {endpoint} (")),
            "{message}"
        );
        assert!(
            message.ends_with("): start it with `scripts/s3-up --seaweedfs`"),
            "{message}"
        );
    }

    #[test]
    fn endpoints_without_a_port_and_malformed_ones() {
        assert!(
            connect("ftp://127.0.0.1:21")
                .unwrap_err()
                .contains("not an http")
        );
        // No port: the scheme's; nothing listens on 127.0.0.1:80 here, or
        // something does: either way the address was understood.
        match connect("http://127.0.0.1/") {
            Ok(()) => {}
            Err(e) => assert!(e.contains("127.0.0.1:80"), "{e}"),
        }
    }

    #[test]
    fn fresh_urls_are_distinct_and_tidy() {
        let a = Server::SeaweedFs.fresh_url("a/b c");
        let b = Server::SeaweedFs.fresh_url("a/b c");
        assert_ne!(a, b);
        assert!(
            a.starts_with("s3://exactly-tests/tests/seaweedfs/a-b-c-"),
            "{a}"
        );
    }

    #[test]
    fn the_client_is_built_without_a_connection() {
        // Nothing listens on port 9: building must not connect.
        let store = Server::Moto.client_via("http://127.0.0.1:9");
        assert!(store.to_string().contains(BUCKET));
    }
}
