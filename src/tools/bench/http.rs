//! `sqs-scheduler bench http`: submits/s and latency of `submit:noop` over `POST /rpc`, from concurrent
//! keep-alive HTTP/1.1 clients. [`RpcHttpClient`] is a minimal JSON-RPC-over-HTTP client (also used by the load
//! generator's `--via http`).

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response accepted (headers and body).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A keep-alive HTTP/1.1 connection that POSTs JSON bodies to one path (default `/rpc`). Reconnects when the
/// server closed the connection between calls.
pub struct RpcHttpClient {
    addr: SocketAddr,
    path: String,
    token: Option<String>,
    conn: Option<BufReader<TcpStream>>,
}

impl RpcHttpClient {
    /// Connects to `addr`; calls go to `POST /rpc`, with `Authorization: Bearer <token>` if a token is given.
    pub async fn connect(addr: SocketAddr, token: Option<String>) -> anyhow::Result<RpcHttpClient> {
        let mut c = RpcHttpClient { addr, path: "/rpc".into(), token, conn: None };
        c.reconnect().await?;
        Ok(c)
    }

    /// Posts to `path` instead of `/rpc`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow!("connect to {} timed out", self.addr))?
            .with_context(|| format!("connect to {}", self.addr))?;
        s.set_nodelay(true)?;
        self.conn = Some(BufReader::new(s));
        Ok(())
    }

    /// POSTs `body`; returns the HTTP status and the response body (empty for 204).
    pub async fn call(&mut self, body: &str) -> anyhow::Result<(u16, String)> {
        let request = self.request(body);
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        match self.exchange(&request).await {
            Ok(r) => Ok(r),
            // A kept-alive connection the server had closed: send again once on a fresh one (submits are
            // idempotent by their dedup key).
            Err(Exchange::ClosedBeforeResponse) => {
                self.reconnect().await?;
                self.exchange(&request).await.map_err(|e| match e {
                    Exchange::ClosedBeforeResponse => anyhow!("connection closed before a response"),
                    Exchange::Failed(e) => e,
                })
            }
            Err(Exchange::Failed(e)) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// Sends a JSON-RPC request and returns the parsed response (None for 204 No Content).
    pub async fn call_json(&mut self, request: &Value) -> anyhow::Result<(u16, Option<Value>)> {
        let (status, body) = self.call(&request.to_string()).await?;
        if body.is_empty() {
            return Ok((status, None));
        }
        let v =
            serde_json::from_str(&body).with_context(|| format!("HTTP {status}: response is not JSON: {body:.200}"))?;
        Ok((status, Some(v)))
    }

    fn request(&self, body: &str) -> Vec<u8> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.path,
            self.addr,
            body.len()
        );
        if let Some(t) = &self.token {
            head.push_str("Authorization: Bearer ");
            head.push_str(t);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, String), Exchange> {
        let conn = self.conn.as_mut().ok_or_else(|| Exchange::Failed(anyhow!("not connected")))?;
        let fut = async {
            if conn.get_mut().write_all(request).await.is_err() {
                return Err(Exchange::ClosedBeforeResponse);
            }
            read_response(conn).await
        };
        let (status, close, body) = tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| Exchange::Failed(anyhow!("no response within {IO_TIMEOUT:?}")))??;
        if close {
            self.conn = None;
        }
        let body = String::from_utf8(body).map_err(|_| Exchange::Failed(anyhow!("response body is not UTF-8")))?;
        Ok((status, body))
    }
}

enum Exchange {
    /// Nothing of a response arrived: the server had closed the connection.
    ClosedBeforeResponse,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Exchange {
    fn from(e: anyhow::Error) -> Self {
        Exchange::Failed(e)
    }
}

/// Reads one response: (status, server closes the connection, body). Content-Length and chunked bodies.
async fn read_response(conn: &mut BufReader<TcpStream>) -> Result<(u16, bool, Vec<u8>), Exchange> {
    let mut line = String::new();
    let n = conn.read_line(&mut line).await.map_err(|_| Exchange::ClosedBeforeResponse)?;
    if n == 0 {
        return Err(Exchange::ClosedBeforeResponse);
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut close = version == "HTTP/1.0";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut header_bytes = line.len();
    loop {
        line.clear();
        let n = conn.read_line(&mut line).await.map_err(|e| anyhow!("reading headers: {e}"))?;
        header_bytes += n;
        if n == 0 {
            return Err(anyhow!("connection closed in the headers").into());
        }
        if header_bytes > 64 * 1024 {
            return Err(anyhow!("response headers too large").into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(anyhow!("bad header line {l:?}").into());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| anyhow!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked(conn).await?
    } else if let Some(n) = length {
        if n > MAX_RESPONSE_BYTES {
            return Err(anyhow!("response of {n} bytes is too large").into());
        }
        let mut b = vec![0; n];
        conn.read_exact(&mut b).await.map_err(|e| anyhow!("reading the body: {e}"))?;
        b
    } else {
        // No length: the body runs to the end of the connection.
        close = true;
        let mut b = Vec::new();
        conn.take(MAX_RESPONSE_BYTES as u64).read_to_end(&mut b).await.map_err(|e| anyhow!("reading the body: {e}"))?;
        b
    };
    Ok((status, close, body))
}

async fn read_chunked(conn: &mut BufReader<TcpStream>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| anyhow!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if conn.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_RESPONSE_BYTES {
            bail!("chunked response too large");
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..]).await?;
        line.clear();
        conn.read_line(&mut line).await?; // CRLF after the chunk
    }
}

/// Address and path of `url`: `http://host:port[/path]` (path `/rpc` if none), or a bare `host:port`.
pub async fn resolve(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let with_scheme = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let u = url::Url::parse(&with_scheme).with_context(|| format!("bad URL {url:?}"))?;
    if u.scheme() != "http" {
        bail!("only http:// URLs are supported, got {url:?}");
    }
    let host = u.host_str().ok_or_else(|| anyhow!("URL {url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u.port_or_known_default().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
    let path = match u.path() {
        "" | "/" => "/rpc".to_string(),
        p => p.to_string(),
    };
    Ok((addr, path))
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct HttpBenchReport {
    /// Calls made, and tasks they submitted (calls × tasks per call).
    pub calls: usize,
    pub tasks: usize,
    /// Calls that failed (an HTTP error, a JSON-RPC error for any of its submits, or no answer).
    pub errors: usize,
    pub seconds: f64,
    /// Sorted per-call latencies in ms.
    pub sorted_ms: Vec<f64>,
}

impl HttpBenchReport {
    /// Tasks submitted per second by the calls that succeeded.
    pub fn tasks_per_second(&self) -> f64 {
        let per_call = self.tasks / self.calls.max(1);
        ((self.calls - self.errors) * per_call) as f64 / self.seconds.max(1e-9)
    }

    pub fn p50_ms(&self) -> Option<f64> {
        super::quantile(&self.sorted_ms, 0.5)
    }

    pub fn p99_ms(&self) -> Option<f64> {
        super::quantile(&self.sorted_ms, 0.99)
    }
}

/// Runs the benchmark and prints its figures: `total` `submit:noop` requests (unique payloads) from `clients`
/// concurrent keep-alive connections to `url` (e.g. `http://127.0.0.1:8080`), `per_call` submits per call (a
/// JSON-RPC batch when more than one). Fails when any call failed, after printing.
pub async fn run(url: &str, token: Option<&str>, clients: usize, total: usize, per_call: usize) -> anyhow::Result<()> {
    let r = measure(url, token, clients, total, per_call).await?;
    println!(
        "http benchmark: {} submit:noop in {} calls ({} per call) over {} keep-alive connections to {url}",
        r.tasks,
        r.calls,
        per_call.max(1),
        clients.max(1)
    );
    println!("(quantiles per call, printed from enough samples only: p99 needs 1,000 calls; failed calls not counted)");
    println!("{:>12} {:>10} {:>10} {:>10} {:>8}", "submits/s", "p50 ms", "p99 ms", "max ms", "errors");
    let max = r.sorted_ms.last().map_or("n/a".into(), |v| format!("{v:.2}"));
    let cell = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
    println!(
        "{:>12.0} {:>10} {:>10} {:>10} {:>8}",
        r.tasks_per_second(),
        cell(r.p50_ms()),
        cell(r.p99_ms()),
        max,
        r.errors
    );
    if r.errors > 0 {
        bail!("{} of {} calls failed", r.errors, r.calls);
    }
    Ok(())
}

/// Like [`run`], without printing.
pub async fn measure(
    url: &str,
    token: Option<&str>,
    clients: usize,
    total: usize,
    per_call: usize,
) -> anyhow::Result<HttpBenchReport> {
    let clients = clients.max(1);
    let per_call = per_call.max(1);
    let calls = total.div_ceil(per_call);
    let (addr, path) = resolve(url).await?;
    let run_id: u64 = rand::random();
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(RpcHttpClient::connect(addr, token.map(str::to_owned)).await?.with_path(path.clone()));
    }
    let submit = |seq: usize| json!({"jsonrpc": "2.0", "method": "submit:noop", "params": {"bench": run_id, "n": seq}, "id": seq});
    let start = Instant::now();
    let per_client = futures::future::join_all(conns.into_iter().enumerate().map(|(c, mut conn)| {
        // Client c makes calls c, c + clients, c + 2 * clients, ...
        let n = (calls + clients - 1 - c) / clients;
        async move {
            let mut latencies = Vec::with_capacity(n);
            let mut errors = 0usize;
            let mut first_error: Option<String> = None;
            for k in 0..n {
                let call = c + k * clients;
                let body = if per_call == 1 {
                    submit(call).to_string()
                } else {
                    Value::Array((call * per_call..(call + 1) * per_call).map(submit).collect()).to_string()
                };
                let t = Instant::now();
                let outcome = conn.call(&body).await;
                let elapsed = t.elapsed().as_secs_f64() * 1000.0;
                let accepted = |v: &Value| v["result"]["id"].is_i64();
                let problem = match outcome {
                    Ok((200, b)) => match serde_json::from_str::<Value>(&b) {
                        Ok(v) if per_call == 1 && accepted(&v) => None,
                        Ok(Value::Array(a)) if a.len() == per_call && a.iter().all(accepted) => None,
                        _ => Some(format!("unexpected response {b:.200}")),
                    },
                    Ok((status, b)) => Some(format!("HTTP {status}: {b:.200}")),
                    Err(e) => Some(format!("{e:#}")),
                };
                match problem {
                    None => latencies.push(elapsed),
                    Some(p) => {
                        errors += 1;
                        first_error.get_or_insert(p);
                    }
                }
            }
            (latencies, errors, first_error)
        }
    }))
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let mut sorted_ms: Vec<f64> = Vec::with_capacity(calls);
    let mut errors = 0;
    for (l, e, first) in per_client {
        sorted_ms.extend(l);
        errors += e;
        if let Some(f) = first {
            tracing::warn!(error = %f, "bench http: a call failed");
        }
    }
    sorted_ms.sort_by(f64::total_cmp);
    Ok(HttpBenchReport { calls, tasks: calls * per_call, errors, seconds, sorted_ms })
}

/// Runs `f` against an in-process HTTP server (`POST /rpc`, bearer token "bench") on a free loopback port, with
/// the database of `settings`; stops the server after. Inside an actix System.
pub async fn with_in_process_server<F, Fut, T>(settings: crate::configuration::Settings, f: F) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use crate::handlers::{HandlerRegistry, KnownActions};
    let mut s = settings;
    s.http.bind = "127.0.0.1:0".into();
    s.http.api_tokens = vec!["bench".into()];
    let state = crate::http::HttpState {
        store: crate::store::TaskStore::new(crate::db::build_pool(&s.database), s.retry.backoff()),
        transport: None,
        rpc_enabled: true,
        known_actions: KnownActions::new(&HandlerRegistry::builtin(), &s.actions),
        settings: std::sync::Arc::new(s),
    };
    let (handle, addr) = crate::http::start_server(state).await?;
    let r = f(format!("http://{addr}/rpc")).await;
    handle.stop(true).await;
    r
}
