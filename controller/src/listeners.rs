//! The daemon's listeners under one file-descriptor budget: the API socket,
//! the metrics TCP listener and the public signup page each get their
//! connection limits from the configuration (or their defaults), and all caps
//! are fitted under `RLIMIT_NOFILE` before anything is bound
//! ([`blockhost_listen::budget`]). The API socket has its own budget, so
//! `bhctl` still gets in while the public page is flooded.

use std::time::Duration;

use blockhost_crd::DaemonConfig;
use blockhost_crd::config::ConnectionLimits;
use blockhost_listen::Limits;
use blockhost_listen::budget::{self, TooFewDescriptors};

/// Default caps; with the daemon's reserve they fit a systemd default soft
/// limit once raised, and the shipped `LimitNOFILE=65536` many times over.
pub const SIGNUP_MAX: usize = 2048;
/// Default per-client cap of the signup page.
pub const SIGNUP_PER_CLIENT: usize = 64;
/// Default cap of the API socket.
pub const API_MAX: usize = 256;
/// Default cap of the metrics listener.
pub const METRICS_MAX: usize = 32;

/// The limits each listener runs with.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The API socket.
    pub api: Limits,
    /// The metrics listener.
    pub metrics: Limits,
    /// The signup page.
    pub signup: Limits,
}

fn apply(mut l: Limits, c: &ConnectionLimits, per_client_default: Option<usize>) -> Limits {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    if let Some(m) = c.max {
        l.max_connections = m as usize;
    }
    l.max_per_client = c.per_client.map(|p| p as usize).or(per_client_default);
    if let Some(s) = c.idle_timeout_secs {
        l.idle_timeout = secs(s);
    }
    if let Some(s) = c.header_timeout_secs {
        l.header_read_timeout = secs(s);
        l.handshake_timeout = secs(s);
    }
    if let Some(n) = c.http2_max_streams {
        l.h2_max_concurrent_streams = n;
    }
    l
}

/// The limits from the configuration, fitted under the open-file limit (raised
/// to its hard limit first). Shrunk caps are logged with what to do.
pub fn plan(cfg: &DaemonConfig) -> Result<Plan, TooFewDescriptors> {
    let api = apply(Limits::local("api", API_MAX), &cfg.api.connections, None);
    let metrics = apply(
        Limits::local("metrics", METRICS_MAX),
        &cfg.metrics.connections,
        None,
    );
    let mut signup = Limits::public("signup", SIGNUP_MAX);
    if let Some(s) = &cfg.signup {
        signup.ipv6_prefix = s.client_ipv6_prefix;
        signup = apply(signup, &s.connections, Some(SIGNUP_PER_CLIENT));
    }
    let limit = match budget::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    };
    // Only the listeners that will be bound count.
    let metrics_cap = cfg.metrics.listen.map_or(0, |_| metrics.max_connections);
    let signup_cap = cfg.signup.as_ref().map_or(0, |_| signup.max_connections);
    let (api_cap, public) = budget::fit(limit, api.max_connections, &[signup_cap, metrics_cap])?;
    let fitted = Plan {
        api: Limits {
            max_connections: api_cap,
            ..api
        },
        signup: Limits {
            max_connections: public[0].max(1),
            ..signup
        },
        metrics: Limits {
            max_connections: public[1].max(1),
            ..metrics
        },
    };
    if api_cap < fitted_wanted(&cfg.api.connections, API_MAX)
        || public[0] < signup_cap
        || public[1] < metrics_cap
    {
        tracing::warn!(
            nofile = limit,
            api = api_cap,
            signup = public[0],
            metrics = public[1],
            "the open-file limit is too low for the configured connection caps; caps lowered to fit: raise LimitNOFILE (65536 in the shipped unit)"
        );
    } else {
        tracing::info!(
            nofile = limit,
            api = api_cap,
            signup = signup_cap,
            metrics = metrics_cap,
            "connection caps"
        );
    }
    Ok(fitted)
}

fn fitted_wanted(c: &ConnectionLimits, default: usize) -> usize {
    c.max.map_or(default, |m| m as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_limits_override_the_defaults() {
        let cfg: DaemonConfig = serde_json::from_value(serde_json::json!({
            "api": {"connections": {"max": 10, "idleTimeoutSecs": 5}},
            "metrics": {"listen": "127.0.0.1:9464"},
        }))
        .unwrap_or_default();
        let p = plan(&cfg).map_err(|e| e.to_string());
        let p = p.as_ref().ok();
        assert_eq!(p.map(|p| p.api.max_connections), Some(10));
        assert_eq!(p.map(|p| p.api.idle_timeout), Some(Duration::from_secs(5)));
        assert_eq!(p.map(|p| p.metrics.max_connections), Some(METRICS_MAX));
        assert_eq!(p.and_then(|p| p.api.max_per_client), None);
    }
}
