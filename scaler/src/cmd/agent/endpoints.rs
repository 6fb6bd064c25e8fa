//! The agent's endpoints, served concurrently so that no client can stall another: HTTP
//! (`/metrics`, `/healthz`, `/readyz` on `agent.metrics_addr`, hyper) and the status socket
//! (`agent.status_socket`), both on one small tokio runtime of their own, on a dedicated
//! thread (`endpoints`), far from the engine thread's hot path.
//!
//! Bounds, so that a flood or a slow client costs a bounded amount of memory and time:
//! at most [`MAX_HTTP_CONNECTIONS`] (and [`MAX_STATUS_CONNECTIONS`]) at once (further clients
//! wait in the kernel's accept queue until a slot frees), request headers read within
//! [`HEADER_READ_TIMEOUT`] into at most [`MAX_HEADER_BYTES`] ([`MAX_HEADERS`] headers), one
//! request per connection, and each connection closed after [`CONNECTION_DEADLINE`] whatever
//! it is doing. The listeners are bound by the caller (before capabilities are dropped) and
//! converted here.

use std::{
    convert::Infallible, net::SocketAddr, os::unix::net::UnixListener, sync::Arc, time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{io::AsyncWriteExt as _, sync::Semaphore};

use super::{health::Health, metrics::Metrics, status::StatusDoc};

/// HTTP connections served at once; more wait in the accept queue.
pub const MAX_HTTP_CONNECTIONS: usize = 128;
/// Status-socket connections served at once.
pub const MAX_STATUS_CONNECTIONS: usize = 16;
/// A client has this long to send its request line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Every connection (HTTP or status) is closed this long after it was accepted.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// The most bytes of request head buffered per connection (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// The most request headers accepted.
pub const MAX_HEADERS: usize = 32;
/// Threads of the runtime's blocking pool (encoding a large scrape, building a status
/// document, which waits for the engine's snapshot).
const BLOCKING_THREADS: usize = 4;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format, for a client that does not ask for OpenMetrics.
const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether the request's `Accept` names OpenMetrics (Prometheus' scrapes do); anything else
/// (`curl`, `promtool check metrics`) gets the Prometheus text format, as Go's promhttp does.
fn wants_openmetrics(headers: &header::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let mut params = t.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            // `q=0` means "not acceptable".
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !params.any(|p| p.replace(' ', "") == "q=0")
        })
}
const TEXT: &str = "text/plain; charset=utf-8";

/// Builds the status document (runs on the blocking pool: it waits for the engine).
pub type StatusFn = Arc<dyn Fn() -> StatusDoc + Send + Sync>;

/// The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
pub struct Http {
    pub listener: std::net::TcpListener,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// The status socket.
pub struct Status {
    pub listener: UnixListener,
    pub doc: StatusFn,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    Readyz,
    Index,
    NotFound,
    MethodNotAllowed,
}

/// Routes a request by method and path.
pub fn route(method: &Method, path: &str) -> Route {
    if method != Method::GET && method != Method::HEAD {
        return Route::MethodNotAllowed;
    }
    match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

/// Starts the endpoints on their own runtime thread. Returns the HTTP address (for port 0).
pub fn start(http: Option<Http>, status: Option<Status>) -> std::io::Result<Option<SocketAddr>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("endpoints-blocking")
        .thread_stack_size(512 << 10)
        .build()?;
    let _in_rt = rt.enter();
    let mut addr = None;
    let http = match http {
        Some(h) => {
            h.listener.set_nonblocking(true)?;
            addr = Some(h.listener.local_addr()?);
            let l = tokio::net::TcpListener::from_std(h.listener)?;
            Some((
                l,
                Arc::new(App {
                    metrics: h.metrics,
                    health: h.health,
                }),
            ))
        }
        None => None,
    };
    let status = match status {
        Some(s) => {
            s.listener.set_nonblocking(true)?;
            Some((tokio::net::UnixListener::from_std(s.listener)?, s.doc))
        }
        None => None,
    };
    drop(_in_rt);
    std::thread::Builder::new()
        .name("endpoints".into())
        .stack_size(1 << 20)
        .spawn(move || {
            rt.block_on(async move {
                let http = async {
                    if let Some((l, app)) = http {
                        serve_http(l, app).await;
                    }
                };
                let status = async {
                    if let Some((l, doc)) = status {
                        serve_status(l, doc).await;
                    }
                };
                tokio::join!(http, status);
            })
        })?;
    Ok(addr)
}

struct App {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

fn response(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

impl App {
    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let health = |r: Result<String, String>| match r {
            Ok(b) => response(StatusCode::OK, TEXT, b),
            Err(b) => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, b),
        };
        match route(req.method(), req.uri().path()) {
            Route::Metrics => {
                let m = self.metrics.clone();
                let openmetrics = wants_openmetrics(req.headers());
                let encoded = tokio::task::spawn_blocking(move || {
                    if openmetrics {
                        (OPENMETRICS, m.encode())
                    } else {
                        (PROMETHEUS_TEXT, m.encode_text())
                    }
                })
                .await;
                match encoded {
                    Ok((ctype, text)) => response(StatusCode::OK, ctype, text),
                    Err(e) => response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT,
                        format!("encoding the metrics failed: {e}\n"),
                    ),
                }
            }
            Route::Healthz => health(self.health.liveness()),
            Route::Readyz => health(self.health.readiness()),
            Route::Index => response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<html><body><a href=\"/metrics\">metrics</a> <a href=\"/healthz\">healthz</a> \
                 <a href=\"/readyz\">readyz</a></body></html>\n",
            ),
            Route::NotFound => response(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
            Route::MethodNotAllowed => {
                let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET or HEAD only\n");
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                r
            }
        }
    }
}

/// Waits a little after a failed accept (out of file descriptors: do not spin).
async fn accept_failed(what: &str, e: std::io::Error) {
    tracing::debug!("{what} accept: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn serve_http(listener: tokio::net::TcpListener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                accept_failed("metrics", e).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.respond(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .max_headers(MAX_HEADERS)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                Err(_) => tracing::debug!(
                    "metrics connection closed at its deadline ({CONNECTION_DEADLINE:?})"
                ),
            }
        });
    }
}

async fn serve_status(listener: tokio::net::UnixListener, doc: StatusFn) {
    let slots = Arc::new(Semaphore::new(MAX_STATUS_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                accept_failed("status", e).await;
                continue;
            }
        };
        let doc = doc.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answer = async {
                let d = tokio::task::spawn_blocking(move || doc())
                    .await
                    .map_err(std::io::Error::other)?;
                let mut body = serde_json::to_vec(&d)?;
                body.push(b'\n');
                stream.write_all(&body).await?;
                stream.shutdown().await
            };
            match tokio::time::timeout(CONNECTION_DEADLINE, answer).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("status client: {e}"),
                Err(_) => tracing::debug!(
                    "status connection closed at its deadline ({CONNECTION_DEADLINE:?})"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        sync::atomic::Ordering,
    };

    use super::*;
    use crate::engine::EngineStats;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/"), Route::Index);
        assert_eq!(route(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(route(&Method::GET, "/readyz"), Route::Readyz);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        let accept = |v: &'static str| {
            let mut h = header::HeaderMap::new();
            h.insert(header::ACCEPT, header::HeaderValue::from_static(v));
            wants_openmetrics(&h)
        };
        // What Prometheus 2.x sends, and what curl sends.
        assert!(accept("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(!accept("*/*"));
        assert!(!accept("text/plain"));
        assert!(!accept("application/openmetrics-text; q=0, text/plain"));
        assert!(!wants_openmetrics(&header::HeaderMap::new()));
        assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        get_with(addr, path, "")
    }

    fn get_with(addr: SocketAddr, path: &str, headers: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_and_health_beside_stalled_clients() {
        let m = Arc::new(Metrics::new());
        m.events
            .get_or_create(&super::super::metrics::KindLabels {
                kind: "reclaim_begin",
            })
            .inc_by(7);
        let stats = Arc::new(EngineStats::default());
        stats
            .loop_stats
            .heartbeat_ns
            .store(crate::clock::monotonic_ns(), Ordering::Relaxed);
        let health = Arc::new(Health::new(stats.clone()));
        let addr = start(
            Some(Http {
                listener: TcpListener::bind("127.0.0.1:0").unwrap(),
                metrics: m,
                health: health.clone(),
            }),
            None,
        )
        .unwrap()
        .unwrap();
        // Idle clients and one that sends half a request hold connections open.
        let mut held: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost").unwrap();
        held.push(half);
        let r = get_with(
            addr,
            "/metrics",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("scaler_events_total{kind=\"reclaim_begin\"} 7"),
            "{r}"
        );
        assert!(r
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"));
        assert!(r.contains("# TYPE scaler_events counter") && r.ends_with("# EOF\n"));
        // A client that does not ask for OpenMetrics (curl, promtool) gets the text format.
        let r = get(addr, "/metrics");
        assert!(r
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"));
        assert!(
            r.contains("# TYPE scaler_events_total counter")
                && r.contains("scaler_events_total{kind=\"reclaim_begin\"} 7")
                && !r.contains("# EOF"),
            "{r}"
        );
        let r = get(addr, "/healthz");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("ok: engine alive"),
            "{r}"
        );
        let r = get(addr, "/readyz");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("not ready"),
            "{r}"
        );
        health.set_ready();
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200 OK\r\n"));
        stats.exited.store(true, Ordering::SeqCst);
        let r = get(addr, "/healthz");
        assert!(r.starts_with("HTTP/1.1 503") && r.contains("exited"), "{r}");
        assert!(get(addr, "/x").starts_with("HTTP/1.1 404"));
        // Oversized headers are refused, not buffered.
        let mut s = TcpStream::connect(addr).unwrap();
        let big = "a".repeat(MAX_HEADER_BYTES * 2);
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nX-Big: {big}\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
        drop(held);
    }
}
