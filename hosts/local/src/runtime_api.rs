//! A minimal Lambda Runtime API, so the real bootstrap binary runs locally exactly as it does
//! in Lambda: it polls `GET /2018-06-01/runtime/invocation/next`, and answers on
//! `…/invocation/{id}/response` or `…/invocation/{id}/error`; a failed cold start posts to
//! `…/runtime/init/error`.
//!
//! [`BootstrapInvoker`] starts one bootstrap process per function against its own endpoint
//! and implements [`Invoker`], so the event source mappings can drive real processes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{Mutex, Notify, oneshot};
use tripflow_lambda::Function;

use crate::esm::Invoker;

type Reply = Result<Value, String>;

#[derive(Default)]
struct State {
    queue: VecDeque<(String, Value)>,
    pending: HashMap<String, oneshot::Sender<Reply>>,
    init_error: Option<String>,
    next_id: u64,
}

/// One function's Runtime API endpoint.
#[derive(Clone)]
pub struct RuntimeApi {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    /// Seconds each invocation may take (the deadline header).
    pub timeout: Duration,
}

impl RuntimeApi {
    /// Serves on a free loopback port until the process ends.
    pub async fn start(timeout: Duration) -> anyhow::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let api = RuntimeApi {
            state: Arc::new(Mutex::new(State::default())),
            ready: Arc::new(Notify::new()),
            address: addr.to_string(),
            timeout,
        };
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let api = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.route(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(api)
    }

    /// Queues an invocation and waits for the function's answer.
    pub async fn invoke(&self, payload: Value) -> Reply {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.state.lock().await;
            if let Some(e) = &s.init_error {
                return Err(format!("init error: {e}"));
            }
            s.next_id += 1;
            let id = format!("local-{:08}", s.next_id);
            s.pending.insert(id.clone(), tx);
            s.queue.push_back((id, payload));
        }
        self.ready.notify_waiters();
        self.ready.notify_one();
        match tokio::time::timeout(self.timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err("the runtime API dropped the invocation".into()),
            Err(_) => Err(format!("no answer within {:?} (timed out)", self.timeout)),
        }
    }

    /// Forgets the invocations a killed process had taken and the ones nobody waits for any
    /// more (the killed invocation, if the process had not taken it yet): neither runs again,
    /// as in Lambda. Invocations still waited for stay queued for the next process.
    pub async fn drop_in_flight(&self) {
        let mut s = self.state.lock().await;
        let s = &mut *s;
        let queued: std::collections::HashSet<String> =
            s.queue.iter().map(|(id, _)| id.clone()).collect();
        s.pending
            .retain(|id, tx| queued.contains(id) && !tx.is_closed());
        let pending = &s.pending;
        s.queue.retain(|(id, _)| pending.contains_key(id));
    }

    /// The cold-start error the bootstrap reported, if any.
    pub async fn init_error(&self) -> Option<String> {
        self.state.lock().await.init_error.clone()
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, "unreadable body"),
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["2018-06-01", "runtime", "invocation", "next"]) => loop {
                let notified = self.ready.notified();
                if let Some((id, payload)) = self.state.lock().await.queue.pop_front() {
                    let deadline = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0)
                        + self.timeout.as_millis() as u64;
                    return Response::builder()
                        .status(StatusCode::OK)
                        .header("Lambda-Runtime-Aws-Request-Id", &id)
                        .header("Lambda-Runtime-Deadline-Ms", deadline.to_string())
                        .header(
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:us-east-1:000000000000:function:tripflow-local",
                        )
                        .header("Lambda-Runtime-Trace-Id", format!("Root=1-00000000-{id}"))
                        .header("Content-Type", "application/json")
                        .body(Full::new(Bytes::from(payload.to_string())))
                        .expect("valid response");
                }
                notified.await;
            },
            (
                Method::POST,
                [
                    "2018-06-01",
                    "runtime",
                    "invocation",
                    id,
                    kind @ ("response" | "error"),
                ],
            ) => {
                let tx = self.state.lock().await.pending.remove(*id);
                let Some(tx) = tx else {
                    return reply(StatusCode::BAD_REQUEST, "unknown request id");
                };
                let text = String::from_utf8_lossy(&body).into_owned();
                let answer = if *kind == "response" {
                    serde_json::from_str(&text).map_err(|e| format!("response is not JSON: {e}"))
                } else {
                    Err(text)
                };
                let _ = tx.send(answer);
                reply(StatusCode::ACCEPTED, "{\"status\":\"OK\"}")
            }
            (Method::POST, ["2018-06-01", "runtime", "init", "error"]) => {
                let mut s = self.state.lock().await;
                s.init_error = Some(String::from_utf8_lossy(&body).into_owned());
                for (_, tx) in s.pending.drain() {
                    let _ = tx.send(Err("init error".into()));
                }
                reply(StatusCode::ACCEPTED, "{\"status\":\"OK\"}")
            }
            _ => reply(StatusCode::NOT_FOUND, "not a Runtime API path"),
        }
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid response")
}

fn logs() -> Stdio {
    if std::env::var_os("TRIPFLOW_FUNCTION_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Bootstrap processes, one per function, each on its own [`RuntimeApi`].
pub struct BootstrapInvoker {
    apis: HashMap<&'static str, RuntimeApi>,
    /// Each function's processes: one, or a pool taking invocations from the same endpoint
    /// (as Lambda runs concurrent invocations in separate instances).
    children: HashMap<&'static str, tokio::sync::Mutex<Vec<tokio::process::Child>>>,
    bootstrap: PathBuf,
    env: Vec<(String, String)>,
    kills: Option<crate::Kills>,
}

fn spawn(
    bootstrap: &Path,
    f: Function,
    env: &[(String, String)],
    api: &RuntimeApi,
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(bootstrap)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("_HANDLER", f.name())
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", format!("tripflow-{}", f.name()))
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "local")
        // The functions' logs and EMF lines: shown with TRIPFLOW_FUNCTION_LOGS=1.
        .stdout(logs())
        .stderr(logs())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bootstrap.display()))
}

impl BootstrapInvoker {
    /// Starts `bootstrap` once per function in `functions`, with `env` (configuration and the
    /// local endpoints) plus `_HANDLER` and `AWS_LAMBDA_RUNTIME_API`.
    pub async fn start(
        bootstrap: &Path,
        functions: &[Function],
        env: &[(String, String)],
    ) -> anyhow::Result<BootstrapInvoker> {
        let mut apis = HashMap::new();
        let mut children = HashMap::new();
        for f in functions {
            let api = RuntimeApi::start(Duration::from_secs(60)).await?;
            let child = spawn(bootstrap, *f, env, &api)?;
            apis.insert(f.name(), api);
            children.insert(f.name(), tokio::sync::Mutex::new(vec![child]));
        }
        Ok(BootstrapInvoker {
            apis,
            children,
            bootstrap: bootstrap.to_path_buf(),
            env: env.to_vec(),
            kills: None,
        })
    }

    /// Runs `instances` processes of `function` (at least one), all taking invocations from
    /// its endpoint, so that concurrent invocations run in parallel.
    pub async fn scale(&self, function: Function, instances: usize) -> anyhow::Result<()> {
        let (Some(children), Some(api)) = (
            self.children.get(function.name()),
            self.apis.get(function.name()),
        ) else {
            anyhow::bail!("no bootstrap runs {}", function.name());
        };
        let mut children = children.lock().await;
        while children.len() < instances.max(1) {
            children.push(spawn(&self.bootstrap, function, &self.env, api)?);
        }
        Ok(())
    }

    /// SIGKILLs processes during some invocations (see
    /// [`crate::Kills`]): whatever the process had written stays written, the invocation gets
    /// no answer, a new process cold-starts for the next one, and the mapping redelivers the
    /// same records.
    pub fn with_kills(mut self, kills: crate::Kills) -> BootstrapInvoker {
        self.kills = Some(kills);
        self
    }

    /// The kills so far, if kills are on.
    pub fn kills(&self) -> Option<&crate::Kills> {
        self.kills.as_ref()
    }

    /// Kills every process of `f` (which of a pool took the invocation is not known here, so
    /// the others' invocations fail too, as in an instance crash they would be retried) and
    /// starts as many again.
    async fn kill_and_restart(&self, f: Function) -> anyhow::Result<()> {
        let (Some(children), Some(api)) = (self.children.get(f.name()), self.apis.get(f.name()))
        else {
            return Ok(());
        };
        let mut children = children.lock().await;
        for child in children.iter_mut() {
            child.start_kill()?; // SIGKILL
            let _ = child.wait().await;
        }
        api.drop_in_flight().await;
        for child in children.iter_mut() {
            *child = spawn(&self.bootstrap, f, &self.env, api)?;
        }
        Ok(())
    }

    /// The process id of `function`'s (first) bootstrap, while it runs.
    pub async fn pid(&self, function: Function) -> Option<u32> {
        self.children
            .get(function.name())?
            .lock()
            .await
            .first()?
            .id()
    }

    /// The endpoint serving `function`.
    pub fn api(&self, function: Function) -> Option<&RuntimeApi> {
        self.apis.get(function.name())
    }

    /// Stops the processes.
    pub async fn stop(&self) {
        for c in self.children.values() {
            for child in c.lock().await.iter_mut() {
                let _ = child.kill().await;
            }
        }
    }
}

impl Invoker for BootstrapInvoker {
    async fn invoke(&self, function: Function, payload: Value) -> Result<Value, String> {
        let Some(api) = self.apis.get(function.name()) else {
            return Err(format!("no bootstrap runs {}", function.name()));
        };
        let kill_at = self.kills.as_ref().and_then(|k| k.next(function));
        let Some(after) = kill_at else {
            return api.invoke(payload).await;
        };
        // The waiting future is dropped when the time is up, so its request is abandoned.
        match tokio::time::timeout(after, api.invoke(payload)).await {
            Ok(r) => r,
            Err(_) => {
                if let Err(e) = self.kill_and_restart(function).await {
                    return Err(format!(
                        "killing the {} process failed: {e}",
                        function.name()
                    ));
                }
                let kills = self.kills.as_ref().expect("kills are on");
                kills
                    .killed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(format!(
                    "SIGKILL {} ms into the invocation",
                    after.as_millis()
                ))
            }
        }
    }
}
