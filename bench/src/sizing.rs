//! The sizing table for operators, from a run's medians: orders per second
//! one core carries for each service, and the cores and relays and consumers
//! that a given rate needs.
//!
//! Invariant: every figure is plain arithmetic on measured medians, and the
//! table prints its arithmetic: orders/s per core = 1,000,000 / µs per order;
//! cores for a rate R = R × µs / 1,000,000; instances for R = R / what one
//! instance did alone, rounded up.

/// The rates the table sizes for, orders/s.
const RATES: [f64; 3] = [1_000.0, 5_000.0, 20_000.0];

/// One service's measured figures.
pub struct Service {
    pub name: &'static str,
    /// CPU microseconds per order (HTTP max phase).
    pub us_per_order: f64,
    /// What one instance did, orders/s, and in which phase; `None` where
    /// instances do not add up (a queue lives on one broker).
    pub one_instance: Option<(f64, &'static str)>,
}

/// Orders/s one core carries.
fn per_core(us_per_order: f64) -> f64 {
    1e6 / us_per_order.max(f64::MIN_POSITIVE)
}

/// Cores that `rate` orders/s need.
fn cores(rate: f64, us_per_order: f64) -> f64 {
    rate * us_per_order / 1e6
}

/// Instances that `rate` orders/s need when one does `one` orders/s.
fn instances(rate: f64, one: f64) -> u64 {
    (rate / one.max(f64::MIN_POSITIVE)).ceil().max(1.0) as u64
}

/// The table's lines.
pub fn lines(services: &[Service]) -> Vec<String> {
    let rates: Vec<String> = RATES.iter().map(|r| format!("{:>16}", format!("at {r:.0}/s"))).collect();
    let mut out = vec![
        "sizing (per core = 1,000,000 / us; cores = rate x us / 1,000,000; instances = rate / one instance, \
         rounded up):"
            .to_string(),
        format!(
            "{:<9} {:>8} {:>14} {:>34}{}",
            "service",
            "us/order",
            "orders/s/core",
            "one instance, orders/s",
            rates.concat()
        ),
    ];
    for s in services {
        let one = match s.one_instance {
            Some((rate, phase)) => format!("{rate:.0} ({phase})"),
            None => "-".to_string(),
        };
        let at: Vec<String> = RATES
            .iter()
            .map(|&rate| {
                let n = s.one_instance.map_or("-".to_string(), |(one, _)| instances(rate, one).to_string());
                format!("{:>16}", format!("{:.2} cores, {n}", cores(rate, s.us_per_order)))
            })
            .collect();
        out.push(format!(
            "{:<9} {:>8.1} {:>14.0} {one:>34}{}",
            s.name,
            s.us_per_order,
            per_core(s.us_per_order),
            at.concat()
        ));
    }
    out.push(
        "(one instance's rate was measured with everything on this machine's cores, so it is a floor; \
         the services' CPU per order is what scales)"
            .to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arithmetic_is_per_core_cores_and_instances_rounded_up() {
        assert_eq!(per_core(25.0), 40_000.0);
        assert!((cores(5_000.0, 38.0) - 0.19).abs() < 1e-9);
        assert_eq!(instances(20_000.0, 9_200.0), 3);
        assert_eq!(instances(1_000.0, 9_200.0), 1);
        assert_eq!(instances(18_400.0, 9_200.0), 2);
    }

    #[test]
    fn each_service_gets_a_row_and_the_broker_no_instance_count() {
        let services = [
            Service { name: "relay", us_per_order: 22.5, one_instance: Some((9_200.0, "drain alone")) },
            Service { name: "broker", us_per_order: 123.0, one_instance: None },
        ];
        let lines = lines(&services);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[2].starts_with("relay") && lines[2].contains("44444") && lines[2].contains("0.45 cores, 3"));
        assert!(lines[3].starts_with("broker") && lines[3].contains("2.46 cores, -"), "{}", lines[3]);
    }
}
