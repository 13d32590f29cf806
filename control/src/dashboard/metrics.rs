//! `/metrics`: frp's Prometheus series (`pkg/metrics/prometheus`), built from a [`Stats`]
//! snapshot at scrape time and written in the text exposition format by the `prometheus`
//! crate.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::stats::Stats;

/// The exposition text of frp's six server series.
pub fn render(stats: &Stats) -> Result<String, prometheus::Error> {
    let server = stats.server();
    let proxies = stats.proxies(None);

    let registry = Registry::new();
    let clients = IntGauge::new(
        "frp_server_client_counts",
        "The current client counts of frps",
    )?;
    let proxy_counts = IntGaugeVec::new(
        Opts::new("frp_server_proxy_counts", "The current proxy counts"),
        &["type"],
    )?;
    let detailed = IntGaugeVec::new(
        Opts::new(
            "frp_server_proxy_counts_detailed",
            "The current number of proxies grouped by type and name",
        ),
        &["type", "name"],
    )?;
    let conns = IntGaugeVec::new(
        Opts::new(
            "frp_server_connection_counts",
            "The current connection counts",
        ),
        &["name", "type"],
    )?;
    let traffic_in = IntCounterVec::new(
        Opts::new("frp_server_traffic_in", "The total in traffic"),
        &["name", "type"],
    )?;
    let traffic_out = IntCounterVec::new(
        Opts::new("frp_server_traffic_out", "The total out traffic"),
        &["name", "type"],
    )?;

    clients.set(server.client_counts);
    for (ty, n) in &server.proxy_type_counts {
        proxy_counts.with_label_values(&[ty.as_str()]).set(*n);
    }
    for p in &proxies {
        let (name, ty) = (p.name.as_str(), p.proxy_type.as_str());
        detailed
            .with_label_values(&[ty, name])
            .set((p.status == "online") as i64);
        conns.with_label_values(&[name, ty]).set(p.cur_conns as i64);
        traffic_in.with_label_values(&[name, ty]).inc_by(p.total_in);
        traffic_out
            .with_label_values(&[name, ty])
            .inc_by(p.total_out);
    }

    registry.register(Box::new(clients))?;
    registry.register(Box::new(proxy_counts))?;
    registry.register(Box::new(detailed))?;
    registry.register(Box::new(conns))?;
    registry.register(Box::new(traffic_in))?;
    registry.register(Box::new(traffic_out))?;

    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::msg::NewProxy;

    #[test]
    fn series_carry_frp_names_and_labels() {
        let stats = Stats::new();
        let c = Arc::new(dataplane::Counters::default());
        let np = NewProxy {
            proxy_name: "ssh".into(),
            proxy_type: "tcp".into(),
            ..Default::default()
        };
        stats.on_proxy_start(&np, "tcp", &c, "", "");
        c.a_to_b.fetch_add(123, Ordering::Relaxed);
        c.b_to_a.fetch_add(45, Ordering::Relaxed);
        c.conns.fetch_add(2, Ordering::Relaxed);
        let text = render(&stats).unwrap();
        for line in [
            "# TYPE frp_server_traffic_in counter",
            "frp_server_traffic_in{name=\"ssh\",type=\"tcp\"} 123",
            "frp_server_traffic_out{name=\"ssh\",type=\"tcp\"} 45",
            "frp_server_connection_counts{name=\"ssh\",type=\"tcp\"} 2",
            "frp_server_proxy_counts{type=\"tcp\"} 1",
            "frp_server_proxy_counts_detailed{name=\"ssh\",type=\"tcp\"} 1",
            "frp_server_client_counts 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
