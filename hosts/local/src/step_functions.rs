//! The KPI state machine of `deploy/template.yaml`, run on moto's Step Functions interpreter
//! (LocalStack's ASL engine, which `moto[stepfunctions]` ships) against the real functions.
//!
//! - [`definition`]: `KpiStateMachine`'s definition as CloudFormation deploys it: the
//!   template's `Definition`, with its `DefinitionSubstitutions` resolved (the KPI function's
//!   ARN, the defaults of the template's parameters). It is read from the template built into
//!   this binary, never from a copy.
//! - [`LambdaEndpoint`]: Lambda's `Invoke` API on [`LocalStack::lambda_port`], where moto's
//!   interpreter sends its `lambda:invoke` tasks. It hands each to an [`Invoker`] (the bootstrap
//!   processes behind the local Runtime API, or the functions in this process) and answers as
//!   Lambda does: the response, or a function error (`X-Amz-Function-Error: Unhandled` with
//!   the error's JSON). It can also fail as Lambda's service fails ([`InvokeFaults`]).
//! - [`StepFunctions`]: the Step Functions calls a backfill needs (create, start, describe), as
//!   JSON over HTTP to moto.
//!
//! Nothing here interprets ASL: moto does.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tripflow_lambda::Function;

use crate::esm::Invoker;
use crate::stack::{ACCOUNT, LocalStack, REGION};

/// The KPI function's ARN here.
pub fn kpi_function_arn() -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:tripflow-kpi")
}

/// The template's `KpiStateMachine` definition as JSON, with `${Name}` replaced by the ARN of
/// the KPI function for `KpiFunctionArn` and by the template parameter's `Default` for every
/// other name `DefinitionSubstitutions` maps to a `!Ref` of a parameter.
pub fn definition(template: &str, function_arn: &str) -> anyhow::Result<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(template).context("parsing the template")?;
    let machine = &doc["Resources"]["KpiStateMachine"]["Properties"];
    let body = machine
        .get("Definition")
        .context("the template's KpiStateMachine has no Definition")?;
    let mut text = serde_json::to_string(&serde_json::to_value(body)?)?;
    let substitutions = machine["DefinitionSubstitutions"]
        .as_mapping()
        .context("the template's KpiStateMachine has no DefinitionSubstitutions")?;
    for (name, value) in substitutions {
        let name = name
            .as_str()
            .context("a substitution's name is not a string")?;
        let resolved = match value {
            serde_yaml::Value::Tagged(t) if t.tag == "!Ref" => {
                let parameter = t.value.as_str().context("a !Ref of no name")?;
                parameter_default(template, parameter).with_context(|| {
                    format!("{name}: parameter {parameter} has no Default to run with")
                })?
            }
            _ if name == "KpiFunctionArn" => function_arn.to_owned(),
            other => bail!("{name}: no local value for {other:?}"),
        };
        text = text.replace(&format!("${{{name}}}"), &resolved);
    }
    if let Some(i) = text.find("${") {
        bail!(
            "the definition still holds {} after substitution",
            &text[i..text.len().min(i + 40)]
        );
    }
    Ok(text)
}

/// The `Default` of the template's parameter `name`.
pub fn parameter_default(template: &str, name: &str) -> Option<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(template).ok()?;
    match &doc["Parameters"][name]["Default"] {
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Faults of Lambda's own service, struck on the KPI state machine's chunk invocations before
/// they reach the function (a killed process is [`crate::Kills`]' business), and what the
/// endpoint served.
#[derive(Default)]
pub struct InvokeFaults {
    /// One chunk invocation in N is throttled (429 `TooManyRequestsException`); 0 = none. Each
    /// chunk is struck once at most by these two, so its retries get through.
    pub throttle_every: AtomicU32,
    /// One chunk invocation in N gets a 500 `ServiceException`; 0 = none.
    pub error_every: AtomicU32,
    /// Every invocation of the chunk holding this date gets a 500 `ServiceException`: a chunk
    /// that fails past its retries.
    pub failing_day: std::sync::Mutex<Option<String>>,
    /// Invocations served, by step (`plan`, `chunk`, `publish`, other).
    pub invocations: [AtomicU64; 4],
    /// Invocations throttled.
    pub throttled: AtomicU64,
    /// Invocations answered with a 500.
    pub errors: AtomicU64,
    /// The most chunk invocations that were running at once.
    pub peak_chunks_in_flight: AtomicU64,
    /// Time spent in the function by chunk invocations, summed (µs).
    pub chunk_busy_us: AtomicU64,
    chunks: AtomicU64,
    chunks_in_flight: AtomicU64,
    struck: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl InvokeFaults {
    /// Invocations served of `step`.
    pub fn served(&self, step: &str) -> u64 {
        self.invocations[step_index(step)].load(Ordering::Relaxed)
    }

    /// The fault for this invocation, if any: `(status, error code)`.
    fn strike(&self, payload: &Value) -> Option<(StatusCode, &'static str)> {
        if payload["step"] != "chunk" {
            return None;
        }
        let failing = self.failing_day.lock().expect("the failing day").clone();
        if let Some(day) = failing {
            let (from, to) = (payload["from"].as_str(), payload["to"].as_str());
            if let (Some(from), Some(to)) = (from, to)
                && from <= day.as_str()
                && day.as_str() <= to
            {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return Some((StatusCode::INTERNAL_SERVER_ERROR, "ServiceException"));
            }
        }
        let n = self.chunks.fetch_add(1, Ordering::Relaxed) + 1;
        let hits = |every: &AtomicU32| {
            let every = u64::from(every.load(Ordering::Relaxed));
            every > 0 && n % every == every / 2
        };
        if !(hits(&self.throttle_every) || hits(&self.error_every)) {
            return None;
        }
        let chunk = format!("{}..{}", payload["from"], payload["to"]);
        if !self.struck.lock().expect("the struck chunks").insert(chunk) {
            return None;
        }
        if hits(&self.throttle_every) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Some((StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException"));
        }
        if hits(&self.error_every) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Some((StatusCode::INTERNAL_SERVER_ERROR, "ServiceException"));
        }
        None
    }
}

fn step_index(step: &str) -> usize {
    match step {
        "plan" => 0,
        "chunk" => 1,
        "publish" => 2,
        _ => 3,
    }
}

/// Lambda's `Invoke` (`POST /2015-03-31/functions/{name}/invocations`) for the KPI function,
/// served until dropped.
pub struct LambdaEndpoint {
    /// The faults it strikes.
    pub faults: Arc<InvokeFaults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LambdaEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LambdaEndpoint {
    /// Serves on `127.0.0.1:port`, invoking the functions through `invoker`.
    pub async fn serve<I: Invoker + 'static>(
        port: u16,
        invoker: Arc<I>,
    ) -> anyhow::Result<LambdaEndpoint> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("serving Lambda's Invoke on port {port}"))?;
        let faults = Arc::new(InvokeFaults::default());
        let served = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (invoker, faults) = (invoker.clone(), served.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (invoker, faults) = (invoker.clone(), faults.clone());
                        async move { Ok::<_, Infallible>(route(&*invoker, &faults, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(LambdaEndpoint { faults, task })
    }
}

/// `%XX` decoded.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The function a `FunctionName` (a name, an ARN, either with a qualifier) names.
fn function_named(name: &str) -> Option<Function> {
    let name = name.rsplit_once(":function:").map_or(name, |(_, n)| n);
    let name = name.split(':').next().unwrap_or(name);
    Function::from_name(name.strip_prefix("tripflow-").unwrap_or(name))
}

/// A fresh `x-amzn-RequestId` (Lambda sends one with every answer; the SDKs read it, and
/// moto's interpreter names it in the cause of a failed task).
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("local-invoke-{:08}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn service_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-amzn-RequestId", request_id())
        .header("Content-Type", "application/json")
        .header("x-amzn-ErrorType", code)
        .body(Full::new(Bytes::from(
            json!({"Type": "Service", "message": message}).to_string(),
        )))
        .expect("valid response")
}

async fn route<I: Invoker>(
    invoker: &I,
    faults: &InvokeFaults,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let function = match (method, parts.as_slice()) {
        (Method::POST, ["2015-03-31", "functions", name, "invocations"]) => {
            match function_named(&percent_decoded(name)) {
                Some(f) => f,
                None => {
                    return service_error(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFoundException",
                        &format!("Function not found: {}", percent_decoded(name)),
                    );
                }
            }
        }
        _ => {
            return service_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "only Invoke is served here",
            );
        }
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return service_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "",
            );
        }
    };
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return service_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!("Could not parse request body into json: {e}"),
            );
        }
    };
    faults.invocations[step_index(payload["step"].as_str().unwrap_or_default())]
        .fetch_add(1, Ordering::Relaxed);
    if let Some((status, code)) = faults.strike(&payload) {
        return service_error(status, code, "injected by tripflow-local");
    }
    let chunk = payload["step"] == "chunk";
    if chunk {
        let now = faults.chunks_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        faults
            .peak_chunks_in_flight
            .fetch_max(now, Ordering::SeqCst);
    }
    let started = Instant::now();
    let answer = invoker.invoke(function, payload).await;
    if chunk {
        faults.chunks_in_flight.fetch_sub(1, Ordering::SeqCst);
        faults
            .chunk_busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    let (body, function_error) = match answer {
        Ok(v) => (v.to_string(), false),
        // The bootstrap posts the error as Lambda's JSON; a process that died answered nothing.
        Err(text) => match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("errorType").is_some() => (text, true),
            _ => (
                json!({"errorType": "Runtime.ExitError", "errorMessage": text}).to_string(),
                true,
            ),
        },
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header("x-amzn-RequestId", request_id())
        .header("Content-Type", "application/json")
        .header("X-Amz-Executed-Version", "$LATEST");
    if function_error {
        response = response.header("X-Amz-Function-Error", "Unhandled");
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Step Functions' API on moto (awsJson 1.0; moto reads the service from the credential scope
/// and does not check signatures).
pub struct StepFunctions {
    endpoint: String,
    client: HttpClient,
}

/// A finished execution.
#[derive(Debug)]
pub struct Execution {
    /// `SUCCEEDED`, `FAILED`, `TIMED_OUT` or `ABORTED`.
    pub status: String,
    /// The output (SUCCEEDED).
    pub output: Option<Value>,
    /// The error name (FAILED).
    pub error: Option<String>,
    /// The error's cause (FAILED).
    pub cause: Option<String>,
    /// From start to the end seen.
    pub elapsed: Duration,
}

impl StepFunctions {
    /// The API at moto's endpoint, with executions turned on (moto's
    /// `stepfunctions.execute_state_machine`).
    pub async fn new(moto: &str) -> anyhow::Result<StepFunctions> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let sfn = StepFunctions {
            endpoint: moto.to_owned(),
            client,
        };
        let req = Request::post(format!("{moto}/moto-api/config"))
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"stepfunctions": {"execute_state_machine": true}}).to_string(),
            )))?;
        let status = sfn.client.request(req).await?.status();
        if !status.is_success() {
            bail!("moto refused to turn on Step Functions executions ({status})");
        }
        Ok(sfn)
    }

    async fn call(&self, operation: &str, body: Value) -> anyhow::Result<Value> {
        let req = Request::post(format!("{}/", self.endpoint))
            .header("Content-Type", "application/x-amz-json-1.0")
            .header("X-Amz-Target", format!("AWSStepFunctions.{operation}"))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=local/20260101/{REGION}/states/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self
            .client
            .request(req)
            .await
            .with_context(|| format!("Step Functions {operation}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            bail!("Step Functions {operation}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("Step Functions {operation}: {text}"))
    }

    /// Creates a standard state machine; returns its ARN.
    pub async fn create_state_machine(
        &self,
        name: &str,
        definition: &str,
    ) -> anyhow::Result<String> {
        let out = self
            .call(
                "CreateStateMachine",
                json!({
                    "name": name,
                    "definition": definition,
                    "roleArn": format!("arn:aws:iam::{ACCOUNT}:role/{name}"),
                    "type": "STANDARD",
                }),
            )
            .await?;
        out["stateMachineArn"]
            .as_str()
            .map(str::to_owned)
            .context("CreateStateMachine answered no ARN")
    }

    /// Starts an execution named `name`; returns its ARN.
    pub async fn start_execution(
        &self,
        machine: &str,
        name: &str,
        input: &Value,
    ) -> anyhow::Result<String> {
        let out = self
            .call(
                "StartExecution",
                json!({"stateMachineArn": machine, "name": name, "input": input.to_string()}),
            )
            .await?;
        out["executionArn"]
            .as_str()
            .map(str::to_owned)
            .context("StartExecution answered no ARN")
    }

    /// Waits until the execution ends, at most `timeout`.
    pub async fn wait(&self, execution: &str, timeout: Duration) -> anyhow::Result<Execution> {
        let started = Instant::now();
        loop {
            let out = self
                .call("DescribeExecution", json!({"executionArn": execution}))
                .await?;
            let status = out["status"].as_str().unwrap_or_default().to_owned();
            if status != "RUNNING" && status != "PENDING_REDRIVE" {
                let text = |k: &str| out[k].as_str().map(str::to_owned);
                return Ok(Execution {
                    status,
                    output: text("output")
                        .map(|o| serde_json::from_str(&o))
                        .transpose()?,
                    error: text("error"),
                    cause: text("cause"),
                    elapsed: started.elapsed(),
                });
            }
            if started.elapsed() > timeout {
                bail!("{execution} still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The template's KPI state machine created on moto, its Lambda tasks served by the
/// functions.
pub struct KpiStateMachine {
    /// Its ARN.
    pub arn: String,
    /// The API it runs on.
    pub sfn: StepFunctions,
    /// Where its Lambda tasks go.
    pub lambda: LambdaEndpoint,
    executions: AtomicU64,
}

impl KpiStateMachine {
    /// Creates the machine from the template built into this binary and serves its Lambda
    /// tasks with `invoker`.
    pub async fn deploy<I: Invoker + 'static>(
        stack: &LocalStack,
        invoker: Arc<I>,
    ) -> anyhow::Result<KpiStateMachine> {
        let lambda = LambdaEndpoint::serve(stack.lambda_port, invoker).await?;
        let sfn = StepFunctions::new(&stack.moto).await?;
        let definition = definition(crate::esm::TEMPLATE, &kpi_function_arn())?;
        let arn = sfn
            .create_state_machine("tripflow-kpi", &definition)
            .await?;
        Ok(KpiStateMachine {
            arn,
            sfn,
            lambda,
            executions: AtomicU64::new(0),
        })
    }

    /// Runs one execution with `input` to its end.
    pub async fn execute(&self, input: &Value, timeout: Duration) -> anyhow::Result<Execution> {
        let n = self.executions.fetch_add(1, Ordering::Relaxed) + 1;
        let execution = self
            .sfn
            .start_execution(&self.arn, &format!("local-{n}"), input)
            .await?;
        self.sfn.wait(&execution, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_definition_has_every_substitution_resolved() {
        let text = definition(crate::esm::TEMPLATE, &kpi_function_arn()).unwrap();
        let asl: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(asl["StartAt"], "Plan");
        assert_eq!(
            asl["States"]["Plan"]["Parameters"]["FunctionName"],
            kpi_function_arn()
        );
        // The parameters' defaults, as a deployment without overrides gets them.
        let defaults = &asl["States"]["Plan"]["Parameters"]["Payload"]["defaults"];
        assert_eq!(defaults["chunk_days"], "31");
        assert_eq!(defaults["max_concurrency"], "8");
        assert!(!text.contains("${"));
    }

    #[test]
    fn function_names_as_step_functions_sends_them() {
        assert_eq!(function_named("tripflow-kpi"), Some(Function::Kpi));
        assert_eq!(
            function_named(&percent_decoded(
                "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Atripflow-kpi%3A%24LATEST"
            )),
            Some(Function::Kpi)
        );
        assert_eq!(function_named("somebody-else"), None);
    }
}
