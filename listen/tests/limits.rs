//! The listener limits against hostile clients on loopback: idle HTTP/2
//! connections are cut, a flood over the cap is refused at once while the open
//! connections keep working, one client cannot take the whole budget, slow
//! headers and silent TLS clients are cut, and a long response is never cut
//! as idle. Each test is bounded to a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use blockhost_listen::{Limits, Listener};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

fn app() -> Router {
    Router::new()
        .route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                // A body that takes longer than the idle timeout to send.
                let ticks = futures::stream::unfold(0u32, |n| async move {
                    if n == 6 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"tick\n")),
                        n + 1,
                    ))
                });
                axum::body::Body::from_stream(ticks)
            }),
        )
}

fn limits(max: usize) -> Limits {
    Limits {
        idle_timeout: Duration::from_millis(400),
        header_read_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        close_grace: Duration::from_millis(500),
        h2_keepalive_interval: Duration::from_millis(200),
        h2_keepalive_timeout: Duration::from_millis(200),
        ..Limits::public("test", max)
    }
}

async fn start(l: Limits) -> (SocketAddr, Listener, CancellationToken) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = Listener::new(l);
    let stop = CancellationToken::new();
    tokio::spawn(listener.clone().serve_tcp(tcp, None, app(), stop.clone()));
    (addr, listener, stop)
}

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 (prior knowledge) client connection from `from`.
async fn h2(
    addr: SocketAddr,
    from: [u8; 4],
) -> Result<(Sender, tokio::task::JoinHandle<()>), hyper::Error> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((send, task))
}

async fn get_body(send: &mut Sender, path: &str) -> Result<String, hyper::Error> {
    let req = hyper::Request::get(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn idle_http2_connections_are_cut_and_a_busy_one_is_not() {
    let (addr, listener, _stop) = start(limits(100)).await;
    let (mut send, conn) = h2(addr, [127, 0, 0, 1]).await.unwrap();
    assert_eq!(get_body(&mut send, "/").await.unwrap(), "127.0.0.1");
    // Left idle, the server closes it (GOAWAY, then the socket).
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("an idle HTTP/2 connection stays open")
        .unwrap();
    assert_eq!(listener.stats().idle_closed(), 1);
    // A response streaming for longer than the idle timeout is not cut.
    let (mut send, _conn) = h2(addr, [127, 0, 0, 1]).await.unwrap();
    let body = get_body(&mut send, "/slow").await.unwrap();
    assert_eq!(body.lines().count(), 6);
    let start = Instant::now();
    while listener.stats().open() > 0 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listener.stats().open(), 0);
}

#[tokio::test]
async fn over_the_cap_new_connections_are_refused_early_and_open_ones_keep_working() {
    let l = Limits {
        idle_timeout: Duration::from_secs(30),
        max_per_client: None,
        ..limits(20)
    };
    let (addr, listener, _stop) = start(l).await;
    let mut open = Vec::new();
    for _ in 0..20 {
        let (mut send, conn) = h2(addr, [127, 0, 0, 1]).await.unwrap();
        get_body(&mut send, "/").await.unwrap();
        open.push((send, conn));
    }
    // 50 more: each is closed at once, not left hanging.
    let started = Instant::now();
    for _ in 0..50 {
        let refused = async {
            let (mut send, _c) = h2(addr, [127, 0, 0, 1]).await?;
            get_body(&mut send, "/").await
        };
        let r = tokio::time::timeout(Duration::from_secs(1), refused)
            .await
            .expect("a refused connection hangs");
        assert!(r.is_err(), "a connection over the cap was served");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(listener.stats().refused(), 50);
    for (send, _) in &mut open {
        assert_eq!(get_body(send, "/").await.unwrap(), "127.0.0.1");
    }
    // One closes: a newcomer gets its slot.
    if let Some((send, driver)) = open.pop() {
        drop(send);
        driver.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok((mut send, _c)) = h2(addr, [127, 0, 0, 1]).await
            && get_body(&mut send, "/").await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was not reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_client_cannot_take_the_whole_budget() {
    let l = Limits {
        max_per_client: Some(3),
        idle_timeout: Duration::from_secs(30),
        ..limits(50)
    };
    let (addr, _listener, _stop) = start(l).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (mut send, conn) = h2(addr, [127, 0, 0, 2]).await.unwrap();
        get_body(&mut send, "/").await.unwrap();
        held.push((send, conn));
    }
    let fourth = async {
        let (mut send, _c) = h2(addr, [127, 0, 0, 2]).await?;
        get_body(&mut send, "/").await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(1), fourth)
            .await
            .unwrap()
            .is_err()
    );
    // Another address is still served.
    let (mut send, _c) = h2(addr, [127, 0, 0, 3]).await.unwrap();
    assert_eq!(get_body(&mut send, "/").await.unwrap(), "127.0.0.3");
}

#[tokio::test]
async fn slow_http1_headers_and_silent_tls_clients_are_cut() {
    let (addr, _listener, _stop) = start(limits(10)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a trickling HTTP/1 client is kept");

    // TLS: a client that connects and says nothing.
    let key = rcgen_free_config();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tcp.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(Listener::new(limits(10)).serve_tcp(tcp, Some(key), app(), stop.clone()));
    let mut silent = TcpStream::connect(tls_addr).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent TLS client is kept");
    assert!(started.elapsed() >= Duration::from_millis(400));
    stop.cancel();
}

/// A server config whose certificate is never checked here (the test only
/// needs the handshake deadline): a certificate resolver that has none makes
/// every real handshake fail, which is fine for a client that sends nothing.
fn rcgen_free_config() -> Arc<rustls::ServerConfig> {
    #[derive(Debug)]
    struct NoCert;
    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert));
    Arc::new(cfg)
}

#[tokio::test]
async fn the_unix_socket_has_its_own_budget() {
    let dir = std::env::temp_dir().join(format!("bh-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.sock");
    let _ = std::fs::remove_file(&path);
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    let stop = CancellationToken::new();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let l = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::local("api", 2)
    };
    let listener = Listener::new(l);
    tokio::spawn(listener.clone().serve_unix(unix, router, stop.clone()));
    let mut conns = Vec::new();
    for _ in 0..2 {
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        assert_eq!(get_body(&mut send, "/").await.unwrap(), "ok");
        conns.push(send);
    }
    // Third refused; after the idle cut, served again.
    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut buf = [0u8; 1];
    let mut s = s;
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "not closed at once: {n:?}"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(listener.stats().open(), 0);
    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    assert_eq!(get_body(&mut send, "/").await.unwrap(), "ok");
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
