//! The table design's cost, held to the aims it was built for: per completed trip at most
//! 3 write units and 0.5 read units (ingest, matcher and a sweeper run), and a KPI run that
//! reads at most 0.02 read units per trip — measured with `ReturnConsumedCapacity` on
//! DynamoDB Local through the real handlers, in order and out of order. The KPI run must also
//! count every trip (`capacity::tripflow_design` checks it).
//!
//! Needs the engines installed by `scripts/install-local-aws.sh` (the test command runs it).

use tripflow_local::capacity::{Traffic, tripflow_design};
use tripflow_local::{LocalStack, stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_trip_costs_at_most_3_write_and_half_a_read_unit() {
    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    for traffic in [Traffic::InOrder, Traffic::OutOfOrder] {
        let u = tripflow_design(&stack, 1_000, traffic).await.unwrap();
        println!(
            "{traffic:?}: {:.3} WCU, {:.3} RCU, KPI run {:.4} RCU per trip; {:?}",
            u.write, u.read, u.kpi_read, u.by_operation
        );
        assert!(u.write <= 3.0, "{traffic:?}: {u:?}");
        assert!(u.read <= 0.5, "{traffic:?}: {u:?}");
        assert!(u.kpi_read <= 0.02, "{traffic:?}: {u:?}");
        // The two half writes are the floor; the rest is per batch, not per trip.
        assert!(u.by_operation["ingest.store"] == 2.0, "{traffic:?}: {u:?}");
    }
}
