//! Serves the example balancer on 127.0.0.1:8000 in front of workers on 127.0.0.1:8001 and
//! 127.0.0.1:8002 (`socketcluster serve --port 8001 --trusted-proxy 127.0.0.1`, and 8002).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers = sc_balancer::WorkerSet::new(["127.0.0.1:8001", "127.0.0.1:8002"])?;
    let _probes = workers.spawn_health_checks(std::time::Duration::from_secs(1));
    let service = example_balancer_app::front_door(workers, &["http://localhost:8000"])?;
    let listener = sc_balancer::bind_reuseport("127.0.0.1:8000".parse()?)?;
    sc_balancer::serve(listener, service, Default::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
