//! The SFT's CPU time and resident memory during a load run: read from
//! `/proc/<pid>` when the SFT runs on this machine, else from its
//! `/metrics` (`process_cpu_seconds_total`, `process_resident_memory_bytes`).

use crate::process::{self, Usage};

/// Where to read an SFT's resource use.
#[derive(Debug, Clone)]
pub enum Probe {
    Pid(u32),
    Metrics(String),
}

impl Probe {
    pub fn describe(&self) -> String {
        match self {
            Probe::Pid(pid) => format!("pid {pid}"),
            Probe::Metrics(url) => url.clone(),
        }
    }

    pub async fn read(&self, http: &reqwest::Client) -> Result<Usage, String> {
        match self {
            Probe::Pid(pid) => process::usage(&pid.to_string()).map_err(|e| format!("pid {pid}: {e}")),
            Probe::Metrics(url) => {
                let text = http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("{url}: {}", super::with_causes(&e)))?
                    .text()
                    .await
                    .map_err(|e| format!("{url}: {}", super::with_causes(&e)))?;
                let value = |name: &str| sample(&text, name).ok_or_else(|| format!("{url}: no {name}"));
                Ok(Usage {
                    cpu_seconds: value("process_cpu_seconds_total")?,
                    rss_bytes: value("process_resident_memory_bytes")? as u64,
                })
            }
        }
    }
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_reads() {
        let probe = Probe::Pid(std::process::id());
        let usage = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(probe.read(&reqwest::Client::new()))
            .unwrap();
        assert!(usage.rss_bytes > 0);
    }

    #[test]
    fn metrics_samples_are_found_by_exact_name() {
        let text =
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total_x 9\nprocess_cpu_seconds_total 1.5\n";
        assert_eq!(sample(text, "process_cpu_seconds_total"), Some(1.5));
        assert_eq!(sample(text, "process_resident_memory_bytes"), None);
    }
}
