//! Faults on demand: a loopback HTTP proxy in front of a local engine that answers a seeded
//! share of requests the way AWS does when it is under stress — throttling
//! (`ProvisionedThroughputExceededException`, `ThrottlingException`, S3's `503 SlowDown`),
//! `500`s, connection resets, and latency — and forwards the rest.
//!
//! Some faults strike *after* the request was forwarded and applied: the write happened, the
//! answer is lost (a `500` or a reset instead of the engine's response). That is the case
//! that tests idempotency, since the client retries a request that already took effect.
//!
//! Only the functions' clients go through the proxies; the harness (event source mappings,
//! the test's own reads) talks to the engines directly, as Lambda's pollers are not the
//! functions' concern.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Rates (0..1) of each fault and the seed that picks which requests get them.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    /// Answered with the service's throttling error, not forwarded.
    pub throttle: f64,
    /// Answered with a `500`: half before forwarding, half after (the request took effect).
    pub server_error: f64,
    /// The connection is closed without an answer: half before, half after forwarding.
    pub reset: f64,
    /// Forwarded after a random delay of up to `latency`.
    pub slow: f64,
    /// Held for `hang` before it is forwarded: longer than the functions' attempt timeout, so
    /// the client gives up and retries while the first attempt still lands later.
    pub timeout: f64,
    /// How long a timed-out request is held.
    pub hang: Duration,
    /// The longest injected delay.
    pub latency: Duration,
    /// Seed of the choice.
    pub seed: u64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            throttle: 0.0,
            server_error: 0.0,
            reset: 0.0,
            slow: 0.0,
            latency: Duration::from_millis(50),
            timeout: 0.0,
            hang: Duration::from_millis(1500),
            seed: 1,
        }
    }
}

impl FaultSpec {
    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        self.throttle + self.server_error + self.reset + self.slow + self.timeout > 0.0
    }
}

impl FromStr for FaultSpec {
    type Err = String;

    /// `throttle=5%,5xx=1%,reset=0.5%,slow=2%,latency=200ms,timeout=0.1%,hang=1500ms,seed=7`
    /// (rates as `5%` or `0.05`).
    fn from_str(s: &str) -> Result<FaultSpec, String> {
        let mut spec = FaultSpec::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: write NAME=VALUE, e.g. throttle=5%"))?;
            let rate = || -> Result<f64, String> {
                let r = match v.strip_suffix('%') {
                    Some(p) => p.parse::<f64>().map(|x| x / 100.0),
                    None => v.parse::<f64>(),
                }
                .map_err(|_| format!("{k}={v}: a rate is like 5% or 0.05"))?;
                if (0.0..=1.0).contains(&r) {
                    Ok(r)
                } else {
                    Err(format!("{k}={v}: a rate is between 0% and 100%"))
                }
            };
            match k {
                "throttle" => spec.throttle = rate()?,
                "5xx" => spec.server_error = rate()?,
                "reset" => spec.reset = rate()?,
                "slow" => spec.slow = rate()?,
                "timeout" => spec.timeout = rate()?,
                "latency" | "hang" => {
                    let d = Duration::from_nanos(
                        v.strip_suffix("ms")
                            .and_then(|m| m.parse::<u64>().ok())
                            .map(|m| m * 1_000_000)
                            .or_else(|| {
                                tripflow_runtime::core::duration::parse_duration(v)
                                    .ok()
                                    .and_then(|n| u64::try_from(n).ok())
                            })
                            .ok_or_else(|| format!("{k}={v}: write e.g. 200ms or 1s"))?,
                    );
                    if k == "latency" {
                        spec.latency = d;
                    } else {
                        spec.hang = d;
                    }
                }
                "seed" => spec.seed = v.parse().map_err(|_| format!("seed={v}: a whole number"))?,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: use throttle, 5xx, reset, slow, latency, timeout, hang, seed"
                    ));
                }
            }
        }
        if spec.throttle + spec.server_error + spec.reset + spec.slow + spec.timeout > 1.0 {
            return Err("the rates add up to more than 100%".into());
        }
        Ok(spec)
    }
}

/// What the proxies did, by kind.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Answered with a throttling error.
    pub throttled: AtomicU64,
    /// `500` before forwarding.
    pub errors_before: AtomicU64,
    /// `500` after forwarding (the request took effect).
    pub errors_after: AtomicU64,
    /// Reset before forwarding.
    pub resets_before: AtomicU64,
    /// Reset after forwarding (the request took effect).
    pub resets_after: AtomicU64,
    /// Delayed.
    pub delayed: AtomicU64,
    /// Held past the client's attempt timeout, then forwarded.
    pub timed_out: AtomicU64,
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = n(&self.requests).max(1) as f64;
        let pct = |a: &AtomicU64| 100.0 * n(a) as f64 / requests;
        write!(
            f,
            "{} requests: {} throttled ({:.1}%), {} 500s before and {} after the request took effect ({:.1}%), {} resets before and {} after ({:.1}%), {} timed out (held past the attempt timeout, then applied), {} delayed",
            n(&self.requests),
            n(&self.throttled),
            pct(&self.throttled),
            n(&self.errors_before),
            n(&self.errors_after),
            100.0 * (n(&self.errors_before) + n(&self.errors_after)) as f64 / requests,
            n(&self.resets_before),
            n(&self.resets_after),
            100.0 * (n(&self.resets_before) + n(&self.resets_after)) as f64 / requests,
            n(&self.timed_out),
            n(&self.delayed),
        )
    }
}

/// Which service an engine speaks, for the shape of its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// DynamoDB (JSON 1.0).
    DynamoDb,
    /// Kinesis (JSON 1.1).
    Kinesis,
    /// moto: S3 (XML) and SQS (JSON 1.0, `X-Amz-Target: AmazonSQS.*`) on one port.
    Moto,
}

/// A running proxy; it stops when the process ends.
pub struct FaultProxy {
    /// `http://127.0.0.1:N`.
    pub endpoint: String,
}

enum Fault {
    None,
    Throttle,
    ErrorBefore,
    ErrorAfter,
    ResetBefore,
    ResetAfter,
    Slow(Duration),
    Hang(Duration),
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:N`).
    pub async fn start(
        upstream: &str,
        service: Service,
        spec: FaultSpec,
        counts: Arc<FaultCounts>,
    ) -> anyhow::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let upstream: hyper::Uri = upstream.parse().context("upstream endpoint")?;
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(spec.seed)));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (upstream, rng, client, counts, spec) = (
                    upstream.clone(),
                    rng.clone(),
                    client.clone(),
                    counts.clone(),
                    spec.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let ctx = Ctx {
                            upstream: upstream.clone(),
                            rng: rng.clone(),
                            client: client.clone(),
                            counts: counts.clone(),
                            spec: spec.clone(),
                            service,
                        };
                        async move { ctx.serve(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(FaultProxy {
            endpoint: format!("http://{addr}"),
        })
    }
}

/// Why the proxy dropped a connection: an injected reset, or the upstream failing.
#[derive(Debug)]
struct Dropped(String);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Dropped {}

fn dropped(e: impl fmt::Display) -> Dropped {
    Dropped(e.to_string())
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// What one request needs.
struct Ctx {
    upstream: hyper::Uri,
    rng: Arc<Mutex<fastrand::Rng>>,
    client: HttpClient,
    counts: Arc<FaultCounts>,
    spec: FaultSpec,
    service: Service,
}

impl Ctx {
    async fn serve(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
        let (counts, service) = (&self.counts, self.service);
        let fault = {
            let mut rng = self.rng.lock().expect("the proxy's rng");
            choose(&self.spec, &mut rng)
        };
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(dropped)?.to_bytes();
        let sqs = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("AmazonSQS"));
        match fault {
            Fault::Throttle => {
                counts.throttled.fetch_add(1, Ordering::Relaxed);
                return Ok(throttled(service, sqs));
            }
            Fault::ErrorBefore => {
                counts.errors_before.fetch_add(1, Ordering::Relaxed);
                return Ok(server_error(service, sqs));
            }
            Fault::ResetBefore => {
                counts.resets_before.fetch_add(1, Ordering::Relaxed);
                return Err(dropped("injected connection reset"));
            }
            Fault::Slow(d) => {
                counts.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(d).await;
            }
            Fault::Hang(d) => {
                counts.timed_out.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(d).await;
            }
            _ => {}
        }
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let mut forward = Request::from_parts(parts, Full::new(body));
        *forward.uri_mut() = hyper::Uri::from_parts(uri).map_err(dropped)?;
        let resp = self.client.request(forward).await.map_err(dropped)?;
        let (rparts, rbody) = resp.into_parts();
        let rbody = rbody.collect().await.map_err(dropped)?.to_bytes();
        match fault {
            Fault::ErrorAfter => {
                counts.errors_after.fetch_add(1, Ordering::Relaxed);
                Ok(server_error(service, sqs))
            }
            Fault::ResetAfter => {
                counts.resets_after.fetch_add(1, Ordering::Relaxed);
                Err(dropped("injected connection reset"))
            }
            _ => Ok(Response::from_parts(rparts, Full::new(rbody))),
        }
    }
}

fn choose(spec: &FaultSpec, rng: &mut fastrand::Rng) -> Fault {
    let x = rng.f64();
    let mut edge = spec.throttle;
    if x < edge {
        return Fault::Throttle;
    }
    edge += spec.server_error;
    if x < edge {
        return if rng.bool() {
            Fault::ErrorBefore
        } else {
            Fault::ErrorAfter
        };
    }
    edge += spec.reset;
    if x < edge {
        return if rng.bool() {
            Fault::ResetBefore
        } else {
            Fault::ResetAfter
        };
    }
    edge += spec.slow;
    if x < edge {
        return Fault::Slow(spec.latency.mul_f64(rng.f64()));
    }
    edge += spec.timeout;
    if x < edge {
        return Fault::Hang(spec.hang);
    }
    Fault::None
}

fn json_error(status: StatusCode, content_type: &str, kind: &str) -> Response<Full<Bytes>> {
    let body = format!(r#"{{"__type":"{kind}","message":"injected by the tripflow fault proxy"}}"#);
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-amzn-requestid", "injected")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn xml_error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the tripflow fault proxy</Message><RequestId>injected</RequestId></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn throttled(service: Service, sqs: bool) -> Response<Full<Bytes>> {
    match service {
        Service::DynamoDb => json_error(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.0",
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        ),
        Service::Kinesis => json_error(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.1",
            "ProvisionedThroughputExceededException",
        ),
        Service::Moto if sqs => json_error(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.0",
            "com.amazonaws.sqs#ThrottlingException",
        ),
        Service::Moto => xml_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
    }
}

fn server_error(service: Service, sqs: bool) -> Response<Full<Bytes>> {
    match service {
        Service::DynamoDb => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.0",
            "com.amazonaws.dynamodb.v20120810#InternalServerError",
        ),
        Service::Kinesis => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.1",
            "InternalFailure",
        ),
        Service::Moto if sqs => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.0",
            "com.amazonaws.sqs#InternalError",
        ),
        Service::Moto => xml_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_as_a_user_writes_them() {
        let s: FaultSpec =
            "throttle=5%, 5xx=1%,reset=0.005,slow=2%,latency=200ms,timeout=0.1%,hang=2s,seed=7"
                .parse()
                .unwrap();
        assert_eq!(
            s,
            FaultSpec {
                throttle: 0.05,
                server_error: 0.01,
                reset: 0.005,
                slow: 0.02,
                latency: Duration::from_millis(200),
                timeout: 0.001,
                hang: Duration::from_secs(2),
                seed: 7,
            }
        );
        assert!(s.any() && !FaultSpec::default().any());
        for bad in [
            "throttle",
            "throttle=lots",
            "throttle=150%",
            "boom=1%",
            "throttle=60%,5xx=60%",
        ] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_choice_follows_the_rates_and_the_seed() {
        let spec: FaultSpec = "throttle=10%,5xx=5%,reset=5%,seed=3".parse().unwrap();
        let run = || {
            let mut rng = fastrand::Rng::with_seed(spec.seed);
            let mut n = [0usize; 4];
            for _ in 0..100_000 {
                match choose(&spec, &mut rng) {
                    Fault::Throttle => n[0] += 1,
                    Fault::ErrorBefore | Fault::ErrorAfter => n[1] += 1,
                    Fault::ResetBefore | Fault::ResetAfter => n[2] += 1,
                    _ => n[3] += 1,
                }
            }
            n
        };
        let n = run();
        assert_eq!(n, run(), "same seed, same faults");
        assert!((9_000..11_000).contains(&n[0]), "{n:?}");
        assert!((4_000..6_000).contains(&n[1]), "{n:?}");
        assert!((4_000..6_000).contains(&n[2]), "{n:?}");
    }
}
