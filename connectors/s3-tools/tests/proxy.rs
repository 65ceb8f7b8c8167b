//! The fault proxy against a tiny upstream written here (no S3 server): raw
//! HTTP/1.1 over `std::net`, so that the tests see the exact bytes the proxy
//! forwards, and a raw client, so that they see the exact bytes it answers.
//! One async test drives it with a hyper client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exactly_s3_tools::proxy::{Exchange, Fault, FaultProxy, Match, Outcome, Rule};

const WAIT: Duration = Duration::from_secs(10);

/// One HTTP message as read off a socket.
#[derive(Debug, Clone)]
struct Message {
    /// The start line and the headers, byte for byte, with the blank line.
    head: String,
    /// The body, de-chunked if it was chunked.
    body: Vec<u8>,
    /// Whether the body was complete (content length reached, or the last
    /// chunk seen) before the connection ended.
    complete: bool,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }
}

/// Reads one message; `Ok(None)` if the connection ends before one starts.
/// A body cut by the connection's end gives `complete: false`.
fn read_message(reader: &mut impl BufRead, has_body: bool) -> io::Result<Option<Message>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut message = Message {
        head,
        body: Vec::new(),
        complete: true,
    };
    if !has_body {
        return Ok(Some(message));
    }
    let chunked = message
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        message.complete = read_chunks(reader, &mut message.body);
    } else if let Some(length) = message.header("content-length") {
        let length: usize = length.parse().unwrap();
        let read = reader
            .take(length as u64)
            .read_to_end(&mut message.body)
            .unwrap_or(0);
        message.complete = read == length && message.body.len() == length;
    }
    Ok(Some(message))
}

/// De-chunks into `body`; whether the last chunk was seen.
fn read_chunks(reader: &mut impl BufRead, body: &mut Vec<u8>) -> bool {
    loop {
        let mut line = String::new();
        if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            return false;
        }
        let size = line.trim_end().split(';').next().unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut line = String::new();
                if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    return false;
                }
                if line == "\r\n" {
                    return true;
                }
            }
        }
        let mut chunk = Vec::new();
        let _ = reader.take(size as u64).read_to_end(&mut chunk);
        body.extend_from_slice(&chunk);
        let mut crlf = [0; 2];
        if chunk.len() < size || reader.read_exact(&mut crlf).is_err() {
            return false;
        }
    }
}

/// The answer the test upstream gives to a request.
type Responder = dyn Fn(&Message) -> Vec<u8> + Send + Sync;

/// A tiny upstream HTTP server on its own threads, recording every request.
struct Upstream {
    url: String,
    received: Arc<Mutex<Vec<Message>>>,
}

impl Upstream {
    fn start(respond: impl Fn(&Message) -> Vec<u8> + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let recorded = received.clone();
        // Lives as long as the test process: a test binary's threads end with it.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (recorded, respond) = (recorded.clone(), respond.clone());
                std::thread::spawn(move || serve(stream, &recorded, &*respond));
            }
        });
        Upstream { url, received }
    }

    /// Answers every request `200 OK` with a small body.
    fn ok() -> Upstream {
        Upstream::start(|_| {
            b"HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Length: 2\r\n\r\nok".to_vec()
        })
    }

    fn received(&self) -> Vec<Message> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived (a cut request arrives after its
    /// client has seen its connection close).
    fn wait_for(&self, n: usize) -> Vec<Message> {
        let deadline = Instant::now() + WAIT;
        while self.received().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.received()
    }
}

fn serve(stream: TcpStream, recorded: &Mutex<Vec<Message>>, respond: &Responder) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Ok(Some(request)) = read_message(&mut reader, true) {
        let complete = request.complete;
        recorded.lock().unwrap().push(request.clone());
        if !complete || writer.write_all(&respond(&request)).is_err() {
            return;
        }
    }
}

/// Sends raw request bytes through the proxy and reads the answer. An
/// answer that does not come, or comes incomplete, is an error.
fn send(proxy: &FaultProxy, request: &[u8]) -> io::Result<Message> {
    send_with_timeout(proxy, request, WAIT)
}

fn send_with_timeout(proxy: &FaultProxy, request: &[u8], timeout: Duration) -> io::Result<Message> {
    let address = proxy.endpoint().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let has_body = !request.starts_with(b"HEAD ");
    match read_message(&mut BufReader::new(stream), has_body)? {
        Some(message) if message.complete => Ok(message),
        Some(_) => Err(io::Error::other("incomplete answer")),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for header in headers {
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        bytes.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

fn get(path: &str) -> Vec<u8> {
    request("GET", path, &[], b"")
}

fn put(path: &str, body: &[u8]) -> Vec<u8> {
    request("PUT", path, &[], body)
}

/// Deterministic bytes that are not a repeating short pattern.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn outcomes(log: &[Exchange]) -> Vec<&Outcome> {
    log.iter().map(|e| &e.outcome).collect()
}

#[test]
fn forwards_the_request_and_the_answer_byte_for_byte() {
    let answer_head = "HTTP/1.1 200 OK\r\nx-amz-request-id: R1\r\nETag: \"3858f62230ac3c915f300c664312c63f\"\r\nX-Amz-Version-Id: null\r\nContent-Length: 9\r\n\r\n";
    let upstream = Upstream::start(move |_| format!("{answer_head}stored ok").into_bytes());
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    let head = "PUT /bucket/job/chk-7/_metadata?x-id=PutObject HTTP/1.1\r\n\
        Host: 127.0.0.1:9401\r\n\
        Authorization: AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;if-none-match;x-amz-content-sha256;x-amz-date, Signature=0123abcd\r\n\
        x-amz-date: 20250101T000000Z\r\n\
        X-Amz-Content-Sha256: UNSIGNED-PAYLOAD\r\n\
        If-None-Match: *\r\n\
        content-type: application/octet-stream\r\n\
        Content-Length: 11\r\n\r\n";
    let answer = send(&proxy, format!("{head}hello world").as_bytes()).unwrap();

    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].head, head);
    assert_eq!(received[0].body, b"hello world");
    assert_eq!(answer.head, answer_head);
    assert_eq!(answer.body, b"stored ok");
    assert_eq!(
        proxy.log(),
        vec![Exchange {
            method: "PUT".into(),
            path: "/bucket/job/chk-7/_metadata?x-id=PutObject".into(),
            conditional: vec!["If-None-Match: *".into()],
            outcome: Outcome::Forwarded(200),
        }]
    );
}

#[test]
fn forwards_large_bodies_both_ways() {
    let big = pattern(3 * 1024 * 1024 + 7);
    let answer = big.clone();
    let upstream = Upstream::start(move |request| {
        let body = if request.head.starts_with("GET") {
            &answer[..]
        } else {
            b""
        };
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes
    });
    let proxy = FaultProxy::start(&upstream.url).unwrap();

    send(&proxy, &put("/bucket/big", &big)).unwrap();
    let got = send(&proxy, &get("/bucket/big")).unwrap();

    let received = upstream.received();
    assert_eq!(received[0].body.len(), big.len());
    assert!(received[0].body == big, "the upstream got other bytes");
    assert_eq!(got.body.len(), big.len());
    assert!(got.body == big, "the client got other bytes");
}

#[test]
fn forwards_chunked_bodies_both_ways() {
    let upstream = Upstream::start(|_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec()
    });
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    let part = pattern(200_000);
    let mut chunked = b"PUT /bucket/object?partNumber=1&uploadId=u1 HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in [&b"first "[..], &part[..], b"last"] {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    let answer = send(&proxy, &chunked).unwrap();

    let received = upstream.received();
    assert_eq!(received[0].header("Transfer-Encoding"), Some("chunked"));
    assert!(received[0].complete);
    assert!(received[0].body == [&b"first "[..], &part, b"last"].concat());
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert_eq!(answer.body, b"hello, world");
}

#[test]
fn forwards_head_answers_with_their_content_length() {
    let upstream = Upstream::start(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nETag: \"e1\"\r\n\r\n".to_vec()
    });
    let proxy = FaultProxy::start(&upstream.url).unwrap();

    let answer = send(&proxy, &request("HEAD", "/bucket/object", &[], b"")).unwrap();

    assert_eq!(answer.status(), 200);
    assert_eq!(answer.header("content-length"), Some("1048576"));
    assert_eq!(answer.header("etag"), Some("\"e1\""));
}

#[test]
fn refuse_closes_the_connection_and_forwards_nothing() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::any(), Fault::Refuse));

    assert!(send(&proxy, &get("/bucket/a")).is_err());
    assert!(send(&proxy, &put("/bucket/b", &pattern(100_000))).is_ok());

    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].head.starts_with("PUT /bucket/b "));
    assert!(matches!(proxy.log()[0].outcome, Outcome::Faulted(_)));
    assert!(proxy.wait_for_faults(1, Duration::ZERO));
}

#[test]
fn delay_holds_the_request_then_forwards_it() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(
        Match::get(),
        Fault::Delay(Duration::from_millis(400)),
    ));

    let started = Instant::now();
    let answer = send(&proxy, &get("/bucket/slow")).unwrap();
    let delayed = started.elapsed();
    let started = Instant::now();
    send(&proxy, &get("/bucket/fast")).unwrap();
    let fast = started.elapsed();

    assert_eq!(answer.body, b"ok");
    assert!(delayed >= Duration::from_millis(400), "{delayed:?}");
    assert!(fast < Duration::from_millis(400), "{fast:?}");
    assert_eq!(upstream.received().len(), 2);
}

#[test]
fn a_delayed_write_lands_after_its_client_gave_up() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(
        Match::put(),
        Fault::Delay(Duration::from_millis(500)),
    ));

    let body = pattern(300_000);
    let attempt = send_with_timeout(
        &proxy,
        &put("/bucket/late", &body),
        Duration::from_millis(100),
    );
    assert!(attempt.is_err(), "the client should have timed out");
    assert!(upstream.received().is_empty());

    assert!(proxy.wait_for_faults(1, WAIT));
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].complete && received[0].body == body);
}

#[test]
fn cut_body_forwards_only_the_first_bytes() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::put(), Fault::CutBody { after: 1000 }));
    let body = pattern(2 * 1024 * 1024);

    let attempt = send(&proxy, &put("/bucket/cut", &body));

    assert!(
        attempt.is_err(),
        "the client should see an error: {attempt:?}"
    );
    assert!(proxy.wait_for_faults(1, WAIT));
    let received = upstream.wait_for(1);
    assert_eq!(received.len(), 1);
    assert!(!received[0].complete);
    assert_eq!(received[0].header("Content-Length"), Some("2097152"));
    assert_eq!(received[0].body, body[..1000]);
}

#[test]
fn cut_body_truncates_a_chunked_body_mid_chunk() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::put(), Fault::CutBody { after: 10 }));
    let chunked =
        b"PUT /bucket/cut HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        6\r\nfirst \r\n10\r\nsecond chunk !!!\r\n0\r\n\r\n";

    assert!(send(&proxy, chunked).is_err());

    assert!(proxy.wait_for_faults(1, WAIT));
    let received = upstream.wait_for(1);
    assert!(!received[0].complete);
    assert_eq!(received[0].body, b"first seco");
}

#[test]
fn status_answers_in_the_upstreams_place() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::put(), Fault::Status(503)));
    proxy.inject(Rule::new(Match::get(), Fault::Status(500)));

    let slow_down = send(&proxy, &put("/bucket/a", &pattern(2 * 1024 * 1024))).unwrap();
    let internal = send(&proxy, &get("/bucket/a")).unwrap();

    assert_eq!(slow_down.status(), 503);
    assert_eq!(slow_down.header("content-type"), Some("application/xml"));
    let xml = String::from_utf8(slow_down.body).unwrap();
    assert!(
        xml.contains(
            "<Error><Code>SlowDown</Code><Message>injected by the fault proxy</Message></Error>"
        ),
        "{xml}"
    );
    assert_eq!(internal.status(), 500);
    assert!(
        String::from_utf8(internal.body)
            .unwrap()
            .contains("<Code>InternalError</Code>")
    );
    assert!(upstream.received().is_empty());
    assert_eq!(
        outcomes(&proxy.log()),
        [
            &Outcome::Faulted("answered 503 without forwarding".into()),
            &Outcome::Faulted("answered 500 without forwarding".into()),
        ]
    );
}

#[test]
fn status_after_forward_lets_the_write_land_then_answers_the_status() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::put(), Fault::StatusAfterForward(500)));

    let answer = send(&proxy, &put("/bucket/_metadata", b"checkpoint 7")).unwrap();

    assert_eq!(answer.status(), 500);
    assert!(
        String::from_utf8(answer.body)
            .unwrap()
            .contains("<Code>InternalError</Code>")
    );
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].complete);
    assert_eq!(received[0].body, b"checkpoint 7");
    assert_eq!(
        outcomes(&proxy.log()),
        [&Outcome::Faulted(
            "forwarded (upstream 200), then answered 500".into()
        )]
    );
}

#[test]
fn times_counts_down_and_clear_removes_the_rules() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::any(), Fault::Status(503)).times(2));

    let statuses: Vec<u16> = (0..3)
        .map(|_| send(&proxy, &get("/bucket/x")).unwrap().status())
        .collect();
    assert_eq!(statuses, [503, 503, 200]);

    proxy.inject(Rule::new(Match::any(), Fault::Status(500)).times(usize::MAX));
    assert_eq!(send(&proxy, &get("/bucket/x")).unwrap().status(), 500);
    assert_eq!(send(&proxy, &get("/bucket/x")).unwrap().status(), 500);
    proxy.clear();
    assert_eq!(send(&proxy, &get("/bucket/x")).unwrap().status(), 200);
    assert!(proxy.wait_for_faults(4, Duration::ZERO));
    assert!(!proxy.wait_for_faults(5, Duration::from_millis(50)));
}

#[test]
fn rules_match_by_method_path_and_header_first_one_wins() {
    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::put().path_contains("_metadata"), Fault::Status(503)).times(10));
    proxy.inject(Rule::new(Match::any().header("if-none-match"), Fault::Status(412)).times(10));
    proxy.inject(Rule::new(Match::method("delete"), Fault::Status(500)).times(10));

    let status = |bytes: Vec<u8>| send(&proxy, &bytes).unwrap().status();
    // Matches the first and the second rule: the first applies.
    assert_eq!(
        status(request("PUT", "/b/_metadata", &["If-None-Match: *"], b"m")),
        503
    );
    assert_eq!(
        status(request("PUT", "/b/data", &["IF-NONE-MATCH: *"], b"d")),
        412
    );
    assert_eq!(status(request("GET", "/b/_metadata", &[], b"")), 200);
    assert_eq!(
        status(request(
            "GET",
            "/b/_metadata",
            &["If-None-Match: \"e1\""],
            b""
        )),
        412
    );
    assert_eq!(status(request("DELETE", "/b/data", &[], b"")), 500);
    assert_eq!(status(request("PUT", "/b/data?uploads", &[], b"d")), 200);
    assert_eq!(upstream.received().len(), 2);
}

#[test]
fn the_log_records_every_exchange() {
    let upstream = Upstream::start(|request| {
        if request.head.starts_with("GET /b/missing") {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
        }
    });
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(Match::method("POST"), Fault::Refuse));

    send(&proxy, &request("PUT", "/b/k", &["If-Match: \"e1\""], b"v")).unwrap();
    send(&proxy, &get("/b/missing")).unwrap();
    send(&proxy, &get("/b?list-type=2&prefix=chk-")).unwrap();
    send(&proxy, &request("POST", "/b/k?uploads", &[], b"")).unwrap_err();

    let log = proxy.log();
    let seen: Vec<(&str, &str, &[String])> = log
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str(), e.conditional.as_slice()))
        .collect();
    assert_eq!(
        seen,
        [
            ("PUT", "/b/k", &["If-Match: \"e1\"".to_owned()][..]),
            ("GET", "/b/missing", &[][..]),
            ("GET", "/b?list-type=2&prefix=chk-", &[][..]),
            ("POST", "/b/k?uploads", &[][..]),
        ]
    );
    assert_eq!(
        outcomes(&log),
        [
            &Outcome::Forwarded(200),
            &Outcome::Forwarded(404),
            &Outcome::Forwarded(200),
            &Outcome::Faulted("refused: closed the connection".into()),
        ]
    );
}

#[test]
fn an_unreachable_upstream_gives_502() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let proxy = FaultProxy::start(&url).unwrap();

    assert_eq!(send(&proxy, &get("/b/k")).unwrap().status(), 502);
    assert!(matches!(proxy.log()[0].outcome, Outcome::UpstreamFailed(_)));
    assert!(!proxy.wait_for_faults(1, Duration::ZERO));
}

#[test]
fn start_rejects_an_upstream_that_is_not_plain_http() {
    for bad in [
        "https://127.0.0.1:9401",
        "127.0.0.1:9401",
        "http://127.0.0.1:9401/bucket",
    ] {
        assert!(FaultProxy::start(bad).is_err(), "{bad}");
    }
}

#[test]
fn dropping_the_proxy_stops_it() {
    let proxy = FaultProxy::start(&Upstream::ok().url).unwrap();
    let address = proxy.endpoint().trim_start_matches("http://").to_owned();
    assert!(TcpStream::connect(&address).is_ok());
    drop(proxy);
    assert!(TcpStream::connect(&address).is_err());
}

/// From an async test, with a hyper client: the proxy's own thread and
/// runtime keep it independent of the test's runtime.
#[tokio::test]
async fn works_from_async_tests_with_a_hyper_client() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    let upstream = Upstream::ok();
    let proxy = FaultProxy::start(&upstream.url).unwrap();
    proxy.inject(Rule::new(
        Match::get().path_contains("refused"),
        Fault::Refuse,
    ));
    proxy.inject(Rule::new(
        Match::get().path_contains("busy"),
        Fault::Status(503),
    ));
    let address = proxy.endpoint().trim_start_matches("http://").to_owned();

    let mut results = Vec::new();
    for path in ["/b/fine", "/b/busy", "/b/refused"] {
        let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header("host", &address)
            .body(Empty::<Bytes>::new())
            .unwrap();
        results.push(match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                Ok((status, body))
            }
            Err(e) => Err(e),
        });
    }

    assert_eq!(
        results[0].as_ref().unwrap(),
        &(200, Bytes::from_static(b"ok"))
    );
    let (status, body) = results[1].as_ref().unwrap();
    assert_eq!(*status, 503);
    assert!(
        std::str::from_utf8(body)
            .unwrap()
            .contains("<Code>SlowDown</Code>")
    );
    let refused = results[2].as_ref().unwrap_err();
    assert!(refused.is_incomplete_message(), "{refused:?}");
    assert_eq!(upstream.received().len(), 1);
}
