//! A fault-injecting HTTP/1.1 proxy to put between a job's S3 client and a
//! local S3 server.
//!
//! The client is configured with the proxy's [`endpoint`](FaultProxy::endpoint)
//! (path-style, plain HTTP). The proxy forwards every request unchanged —
//! method, path and query, all headers with their case (`Host`, the SigV4
//! `Authorization`, `x-amz-*`, `If-Match`, `If-None-Match`), the body,
//! chunked or with a content length — so that signatures stay valid, and
//! streams the upstream's answer back unchanged. At the requests a test
//! picks with a [`Rule`], it applies a [`Fault`] instead: it refuses, holds
//! the request, cuts its body, answers an error status in the upstream's
//! place, or lets the upstream apply the request and then answers an error
//! (an ambiguous write). Every exchange is logged ([`FaultProxy::log`]).
//!
//! Owns: the forwarding, the rules, the faults and the log. Does not own:
//! S3 semantics (the upstream server's job: what is stored, what a
//! condition means), the servers themselves ([`crate::servers`]), the
//! checkpoint protocol (`exactly::storage`), TLS or HTTP/2 (the local
//! servers speak plain HTTP/1.1).
//!
//! Why hand-written on hyper: the faults act on one HTTP exchange in flight
//! — pick the PUT to `_metadata` by method, path or header; cut its body at
//! byte `n`; let it land upstream and then replace its answer. A TCP-level
//! fault proxy sees bytes, not requests, and HTTP mocking crates are made to
//! answer in a server's place rather than to tamper with one forwarded
//! exchange. hyper (already in the dependency tree under object_store's
//! HTTP client) does the HTTP/1.1 parsing and framing, so what is left here
//! is small: rules, faults, a log.
//!
//! Each request goes upstream on a fresh connection, and is handled on its
//! own task, so that a client that gives up does not cancel it: a delayed
//! write still lands, late.
//!
//! ```
//! use exactly_s3_tools::proxy::{Fault, FaultProxy, Match, Rule};
//!
//! let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
//! // The next PUT to a `_metadata` object gets a 503 SlowDown; every other
//! // request goes to the server on port 9401.
//! proxy.inject(Rule::new(Match::put().path_contains("_metadata"), Fault::Status(503)));
//! let endpoint = proxy.endpoint(); // give this to the S3 client
//! assert!(endpoint.starts_with("http://127.0.0.1:"));
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running fault proxy: listens on `127.0.0.1:<ephemeral port>` and
/// forwards to one upstream server. Dropping it stops it, and closes the
/// connections it holds.
///
/// ```
/// use exactly_s3_tools::proxy::FaultProxy;
///
/// let proxy = FaultProxy::start("http://127.0.0.1:9402").unwrap();
/// let endpoint = proxy.endpoint();
/// drop(proxy); // stopped: nothing listens on `endpoint` any more
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Which requests get a fault, which fault, and for how many of them.
///
/// ```
/// use exactly_s3_tools::proxy::{Fault, Match, Rule};
///
/// // The next two PUTs to `_metadata` get a 503.
/// let rule = Rule::new(Match::put().path_contains("_metadata"), Fault::Status(503)).times(2);
/// assert_eq!(rule.times, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The requests this rule applies to.
    pub matcher: Match,
    /// What the proxy does to them.
    pub fault: Fault,
    /// How many more matching requests get the fault; the rule is spent at 0.
    pub times: usize,
}

/// What a request must look like for a rule to apply; `None` parts match
/// anything, so `Match::default()` matches every request.
///
/// ```
/// use exactly_s3_tools::proxy::Match;
///
/// let conditional_put = Match::put().header("If-None-Match");
/// assert_eq!(conditional_put.method.as_deref(), Some("PUT"));
/// assert_eq!(conditional_put.header.as_deref(), Some("If-None-Match"));
/// assert_eq!(Match::default(), Match::any());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// The request's method, compared case-insensitively (`"PUT"`, `"GET"`…).
    pub method: Option<String>,
    /// A substring of the request's path with its query (`"_metadata"`, `"uploads"`…).
    pub path_contains: Option<String>,
    /// A header the request has, whatever its value; the name is compared
    /// case-insensitively.
    pub header: Option<String>,
}

/// What the proxy does to a request a rule picked.
///
/// ```
/// use std::time::Duration;
/// use exactly_s3_tools::proxy::Fault;
///
/// let faults = [
///     Fault::Refuse,
///     Fault::Delay(Duration::from_secs(2)),
///     Fault::CutBody { after: 1024 },
///     Fault::Status(503),
///     Fault::StatusAfterForward(500),
/// ];
/// assert_eq!(faults.len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Closes the client's connection without answering and forwards
    /// nothing: the client sees an incomplete message or a reset.
    Refuse,
    /// Reads the whole request, waits this long, then forwards it and
    /// streams the answer back. The request is forwarded even if the client
    /// has given up meanwhile: a write that lands late.
    Delay(Duration),
    /// Sends the request head and the first `after` bytes of its body
    /// upstream (as a truncated chunk if the request is chunked), then closes
    /// both connections: the upstream sees an incomplete request and must not
    /// apply it; the client sees an error. If the body is no longer than
    /// `after`, all of it goes upstream and only the answer is lost.
    CutBody {
        /// Body bytes forwarded before the cut.
        after: usize,
    },
    /// Reads the request's body, forwards nothing, and answers this status
    /// with an S3-style XML error body (`SlowDown` for 503, `InternalError`
    /// for 500, …).
    Status(u16),
    /// Forwards the request and reads the upstream's whole answer (so the
    /// upstream has applied it), then answers the client this status with an
    /// S3-style XML error body instead: the write landed, the client thinks
    /// it failed.
    StatusAfterForward(u16),
}

/// One request the proxy saw, and what it did with it.
///
/// ```
/// use exactly_s3_tools::proxy::{Exchange, Outcome};
///
/// let put = Exchange {
///     method: "PUT".into(),
///     path: "/bucket/job/_metadata".into(),
///     conditional: vec!["If-None-Match: *".into()],
///     outcome: Outcome::Forwarded(200),
/// };
/// assert_eq!(put.outcome, Outcome::Forwarded(200));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The request's method.
    pub method: String,
    /// The request's path with its query, as sent.
    pub path: String,
    /// The conditional headers the request had, as `"If-Match: <value>"` and
    /// `"If-None-Match: <value>"`.
    pub conditional: Vec<String>,
    /// What the proxy did.
    pub outcome: Outcome,
}

/// What the proxy did with a request.
///
/// ```
/// use exactly_s3_tools::proxy::Outcome;
///
/// let outcome = Outcome::Faulted("answered 503 without forwarding".into());
/// assert!(matches!(outcome, Outcome::Faulted(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the upstream answered this status, passed on unchanged.
    Forwarded(u16),
    /// A fault was applied; the text says which and how it went.
    Faulted(String),
    /// No fault applied, but the upstream could not be reached or failed
    /// before answering; the client got a 502.
    UpstreamFailed(String),
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<ephemeral>` forwarding to `upstream`
    /// (`"http://127.0.0.1:9401"`). Runs on its own thread with its own tokio
    /// runtime, so that synchronous tests and async tests can both use it.
    /// Nothing connects upstream until a request comes.
    ///
    /// Fails if `upstream` is not an `http://host:port` URL, or if the
    /// listener or the runtime cannot be set up.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::FaultProxy;
    ///
    /// let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
    /// assert!(FaultProxy::start("https://127.0.0.1:9401").is_err());
    /// # drop(proxy);
    /// ```
    pub fn start(upstream: &str) -> io::Result<FaultProxy> {
        let upstream = upstream_authority(upstream)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            faulted: Condvar::new(),
        });
        let (shutdown, stopped) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(_) => return,
                    };
                    tokio::select! {
                        () = accept_loop(listener, serving) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(FaultProxy {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The URL to give the S3 client: `"http://127.0.0.1:PORT"`.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::FaultProxy;
    ///
    /// let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
    /// let port: u16 = proxy.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    /// assert_ne!(port, 0);
    /// ```
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule: the next `times` requests that match get the fault.
    /// Rules are checked in insertion order; the first live one that matches
    /// applies (and counts down), the others are not consulted.
    ///
    /// Panics if a [`Fault::Status`] or [`Fault::StatusAfterForward`] code
    /// is not a final HTTP status (200..=599).
    ///
    /// ```
    /// use exactly_s3_tools::proxy::{Fault, FaultProxy, Match, Rule};
    ///
    /// let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
    /// proxy.inject(Rule::new(Match::method("DELETE"), Fault::Refuse).times(3));
    /// ```
    pub fn inject(&self, rule: Rule) {
        if let Fault::Status(code) | Fault::StatusAfterForward(code) = rule.fault {
            assert!(
                (200..=599).contains(&code),
                "fault proxy: {code} is not a final HTTP status"
            );
        }
        self.shared.lock().rules.push(rule);
    }

    /// Removes every rule; requests are forwarded untouched from now on. The
    /// log and the fault count stay.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::{Fault, FaultProxy, Match, Rule};
    ///
    /// let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
    /// proxy.inject(Rule::new(Match::any(), Fault::Status(500)).times(usize::MAX));
    /// proxy.clear();
    /// ```
    pub fn clear(&self) {
        self.shared.lock().rules.clear();
    }

    /// Every request seen so far: method, path (with query), the conditional
    /// headers present (If-Match / If-None-Match), and what was done
    /// (forwarded with upstream status, or the fault applied). In the order
    /// the outcomes were decided: a forwarded request when its answer's head
    /// came back, a delayed one after its delay.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::FaultProxy;
    ///
    /// let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
    /// assert!(proxy.log().is_empty());
    /// ```
    pub fn log(&self) -> Vec<Exchange> {
        self.shared.lock().log.clone()
    }

    /// Waits (with a timeout) until the proxy has applied `n` faults in
    /// total; returns false on timeout. A fault counts once its effect is
    /// complete: a delayed request once forwarded and answered upstream, a
    /// [`Fault::StatusAfterForward`] once the upstream has answered, a cut
    /// once both connections are closed.
    ///
    /// Blocks the calling thread (the proxy runs on its own, so that is
    /// safe; in an async test, mind other tasks of the test's runtime).
    ///
    /// ```
    /// use std::time::Duration;
    /// use exactly_s3_tools::proxy::FaultProxy;
    ///
    /// let proxy = FaultProxy::start("http://127.0.0.1:9401").unwrap();
    /// assert!(proxy.wait_for_faults(0, Duration::ZERO));
    /// assert!(!proxy.wait_for_faults(1, Duration::from_millis(10)));
    /// ```
    pub fn wait_for_faults(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.faults < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .faulted
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint())
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl Rule {
    /// A rule that applies `fault` to the next request matching `matcher`
    /// (once; see [`Rule::times`]).
    ///
    /// ```
    /// use exactly_s3_tools::proxy::{Fault, Match, Rule};
    ///
    /// let rule = Rule::new(Match::get(), Fault::Refuse);
    /// assert_eq!(rule.times, 1);
    /// ```
    pub fn new(matcher: Match, fault: Fault) -> Rule {
        Rule {
            matcher,
            fault,
            times: 1,
        }
    }

    /// Applies the fault to the next `times` matching requests;
    /// `usize::MAX` for every one.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::{Fault, Match, Rule};
    ///
    /// let always = Rule::new(Match::any(), Fault::Status(500)).times(usize::MAX);
    /// assert_eq!(always.times, usize::MAX);
    /// ```
    pub fn times(mut self, times: usize) -> Rule {
        self.times = times;
        self
    }
}

impl Match {
    /// Matches every request.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::Match;
    ///
    /// assert_eq!(Match::any().method, None);
    /// ```
    pub fn any() -> Match {
        Match::default()
    }

    /// Matches requests with this method (case-insensitive).
    ///
    /// ```
    /// use exactly_s3_tools::proxy::Match;
    ///
    /// assert_eq!(Match::method("POST").method.as_deref(), Some("POST"));
    /// ```
    pub fn method(method: &str) -> Match {
        Match {
            method: Some(method.to_owned()),
            ..Match::default()
        }
    }

    /// Matches PUT requests (object writes and upload parts).
    ///
    /// ```
    /// use exactly_s3_tools::proxy::Match;
    ///
    /// assert_eq!(Match::put(), Match::method("PUT"));
    /// ```
    pub fn put() -> Match {
        Match::method("PUT")
    }

    /// Matches GET requests (object reads and listings).
    ///
    /// ```
    /// use exactly_s3_tools::proxy::Match;
    ///
    /// assert_eq!(Match::get(), Match::method("GET"));
    /// ```
    pub fn get() -> Match {
        Match::method("GET")
    }

    /// Also requires the path with its query to contain `fragment`.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::Match;
    ///
    /// let listing = Match::get().path_contains("list-type=2");
    /// assert_eq!(listing.path_contains.as_deref(), Some("list-type=2"));
    /// ```
    pub fn path_contains(mut self, fragment: &str) -> Match {
        self.path_contains = Some(fragment.to_owned());
        self
    }

    /// Also requires the request to have header `name` (case-insensitive),
    /// whatever its value.
    ///
    /// ```
    /// use exactly_s3_tools::proxy::Match;
    ///
    /// let overwrite = Match::put().header("if-match");
    /// assert_eq!(overwrite.header.as_deref(), Some("if-match"));
    /// ```
    pub fn header(mut self, name: &str) -> Match {
        self.header = Some(name.to_owned());
        self
    }

    fn matches(&self, method: &str, path: &str, headers: &HeaderMap) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_ref()
                .is_none_or(|fragment| path.contains(fragment.as_str()))
            && self
                .header
                .as_ref()
                .is_none_or(|name| headers.contains_key(name.to_ascii_lowercase().as_str()))
    }
}

struct Shared {
    /// `host:port` of the upstream server.
    upstream: String,
    state: Mutex<State>,
    faulted: Condvar,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<Exchange>,
    faults: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The fault of the first live rule matching the request, counted down.
    fn take_fault(&self, method: &str, path: &str, headers: &HeaderMap) -> Option<Fault> {
        let mut state = self.lock();
        let index = state
            .rules
            .iter()
            .position(|rule| rule.times > 0 && rule.matcher.matches(method, path, headers))?;
        let rule = &mut state.rules[index];
        rule.times -= 1;
        let fault = rule.fault.clone();
        if rule.times == 0 {
            state.rules.remove(index);
        }
        Some(fault)
    }

    fn record(&self, exchange: Exchange) {
        let mut state = self.lock();
        if matches!(exchange.outcome, Outcome::Faulted(_)) {
            state.faults += 1;
            self.faulted.notify_all();
        }
        state.log.push(exchange);
    }
}

/// The answer to the client; `Err` closes its connection without one.
type Answer = Result<Response<BoxBody<Bytes, hyper::Error>>, CloseConnection>;

/// Makes hyper drop the client's connection without answering.
#[derive(Debug)]
struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed by a fault")
    }
}

impl std::error::Error for CloseConnection {}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: wait, then go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                // On its own task, so that a client closing its connection
                // (which drops this future) does not cancel the exchange.
                let exchange = tokio::spawn(handle(shared.clone(), request));
                async move { exchange.await.unwrap_or(Err(CloseConnection)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .auto_date_header(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().to_string(), |pq| pq.as_str().to_owned());
    let conditional =
        ["If-Match", "If-None-Match"]
            .iter()
            .flat_map(|name| {
                request.headers().get_all(*name).iter().map(move |value| {
                    format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()))
                })
            })
            .collect();
    let fault = shared.take_fault(&method, &path, request.headers());
    let upstream = shared.upstream.as_str();
    let record = |outcome| {
        shared.record(Exchange {
            method: method.clone(),
            path: path.clone(),
            conditional: Vec::clone(&conditional),
            outcome,
        })
    };

    match fault {
        None => match forward(upstream, request).await {
            Ok(response) => {
                record(Outcome::Forwarded(response.status().as_u16()));
                Ok(response.map(BodyExt::boxed))
            }
            Err(e) => {
                record(Outcome::UpstreamFailed(e.clone()));
                Ok(bad_gateway(&e))
            }
        },
        Some(Fault::Refuse) => {
            record(Outcome::Faulted("refused: closed the connection".into()));
            Err(CloseConnection)
        }
        Some(Fault::Delay(delay)) => {
            let (head, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    record(Outcome::Faulted(format!(
                        "delay: the request body failed before the delay: {e}"
                    )));
                    return Err(CloseConnection);
                }
            };
            tokio::time::sleep(delay).await;
            match forward(upstream, Request::from_parts(head, Full::new(body))).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    record(Outcome::Faulted(format!(
                        "delayed {delay:?}, then forwarded: upstream {status}"
                    )));
                    Ok(response.map(BodyExt::boxed))
                }
                Err(e) => {
                    record(Outcome::Faulted(format!(
                        "delayed {delay:?}, then the upstream failed: {e}"
                    )));
                    Ok(bad_gateway(&e))
                }
            }
        }
        Some(Fault::CutBody { after }) => {
            let (head, body) = request.into_parts();
            let what = match cut(upstream, &head, body, after).await {
                Ok(sent) => format!(
                    "cut: sent the head and {sent} body bytes upstream, then closed both connections"
                ),
                Err(e) => format!("cut: the upstream failed: {e}"),
            };
            record(Outcome::Faulted(what));
            Err(CloseConnection)
        }
        Some(Fault::Status(code)) => {
            // Read the body, so that the client is not cut off mid-write.
            let _ = request.into_body().collect().await;
            record(Outcome::Faulted(format!(
                "answered {code} without forwarding"
            )));
            Ok(injected_error(code))
        }
        Some(Fault::StatusAfterForward(code)) => {
            let what = match forward(upstream, request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // The whole answer, so that the upstream is done with it.
                    let _ = response.into_body().collect().await;
                    format!("forwarded (upstream {status}), then answered {code}")
                }
                Err(e) => format!("the upstream failed ({e}), then answered {code}"),
            };
            record(Outcome::Faulted(what));
            Ok(injected_error(code))
        }
    }
}

/// Sends `request` upstream on a new connection, as it is; the answer's
/// body streams from that connection.
async fn forward<B>(upstream: &str, request: Request<B>) -> Result<Response<Incoming>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to {upstream}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{upstream}: {e}"))?;
    // Runs until the answer's body is read (or dropped).
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("{upstream}: {e}"))
}

/// Writes the request head and the first `after` body bytes to a new
/// upstream connection, then closes it. Returns the body bytes sent.
async fn cut(
    upstream: &str,
    head: &hyper::http::request::Parts,
    mut body: Incoming,
    after: usize,
) -> io::Result<usize> {
    let mut stream = TcpStream::connect(upstream).await?;
    let mut bytes = format!("{} {} {:?}\r\n", head.method, head.uri, head.version).into_bytes();
    for (name, value) in &head.headers {
        bytes.extend_from_slice(name.as_str().as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    stream.write_all(&bytes).await?;

    let chunked = head
        .headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().to_ascii_lowercase().ends_with(b"chunked"));
    let mut sent = 0;
    while sent < after {
        let Some(frame) = body.frame().await else {
            // The whole body fits before the cut: send its end too.
            if chunked {
                stream.write_all(b"0\r\n\r\n").await?;
            }
            break;
        };
        let Ok(data) = frame.map_err(io::Error::other)?.into_data() else {
            continue; // trailers
        };
        let take = data.len().min(after - sent);
        if chunked && !data.is_empty() {
            stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
        }
        stream.write_all(&data[..take]).await?;
        if chunked && take == data.len() && !data.is_empty() {
            stream.write_all(b"\r\n").await?;
        }
        sent += take;
    }
    stream.flush().await?;
    stream.shutdown().await?;
    Ok(sent)
}

/// An S3-style error answer for an injected status.
fn injected_error(code: u16) -> Response<BoxBody<Bytes, hyper::Error>> {
    let s3_code = match code {
        500 => "InternalError",
        503 => "SlowDown",
        501..=599 => "ServiceUnavailable",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        409 => "ConditionalRequestConflict",
        412 => "PreconditionFailed",
        _ => "InvalidRequest",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{s3_code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer(status, "application/xml", body)
}

fn bad_gateway(error: &str) -> Response<BoxBody<Bytes, hyper::Error>> {
    answer(
        StatusCode::BAD_GATEWAY,
        "text/plain; charset=utf-8",
        format!("fault proxy: {error}\n"),
    )
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<BoxBody<Bytes, hyper::Error>> {
    let length = body.len();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, length.into());
    response
}

/// `"http://host:port"` → `"host:port"` (port 80 when absent).
fn upstream_authority(url: &str) -> io::Result<String> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fault proxy upstream {url:?}: {why}"),
        )
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("only http:// is supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("expected no path: http://host:port"));
    }
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}
