//! The Lambda bootstrap for all four tripflow functions; `Handler` picks the function.

#[tokio::main]
async fn main() -> Result<(), tripflow_lambda::Error> {
    tripflow_lambda::run().await
}
