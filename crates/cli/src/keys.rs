//! `oncely keys`: inspect, list and evict keys through a running gateway's admin listener.

use clap::{Args, Subcommand};
use oncely_core::Tenant;

#[derive(Args)]
pub(crate) struct KeysArgs {
    /// The gateway's admin listener.
    #[arg(
        long,
        value_name = "URL",
        env = "ONCELY_ADMIN_URL",
        default_value = "http://127.0.0.1:7979"
    )]
    admin: String,
    /// The admin listener's bearer token, if it has one.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ONCELY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Keys in progress, oldest first: running now, or left by a crashed request (a lease end
    /// in the past: the next retry takes the key over).
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One key's record: state, fingerprint, times, stored status and body size.
    Get(KeyArgs),
    /// Deletes one key's record whatever its state, so that its next request executes again.
    Evict(KeyArgs),
    /// The last lease takeovers this gateway made.
    Takeovers,
    /// Live record counts of the store.
    Stats,
}

#[derive(Args)]
struct KeyArgs {
    /// The Idempotency-Key, unquoted.
    key: String,
    /// The request path the key was used on, e.g. /payments.
    #[arg(long)]
    route: String,
    #[arg(long, default_value = "POST")]
    method: String,
    /// The tenant as the admin API shows it (`anon`, `hdr:...`, `auth:...`).
    #[arg(long, group = "tenant_source")]
    tenant: Option<String>,
    /// The `Authorization` value the client sent (only its hash is used or sent).
    #[arg(long, group = "tenant_source")]
    authorization: Option<String>,
    /// The value of the tenant header the client sent (routes with `tenant = "header:..."`).
    #[arg(long, group = "tenant_source")]
    tenant_header: Option<String>,
    /// The anonymous tenant (routes with `tenant = "anonymous"`).
    #[arg(long, group = "tenant_source")]
    anonymous: bool,
}

impl KeyArgs {
    fn tenant(&self) -> Result<Tenant, String> {
        if let Some(t) = &self.tenant {
            return Ok(Tenant::from_stored(t.clone()));
        }
        if let Some(a) = &self.authorization {
            return Ok(Tenant::from_authorization(a.as_bytes()));
        }
        if let Some(h) = &self.tenant_header {
            return Ok(Tenant::from_header_value(h.as_bytes()));
        }
        if self.anonymous {
            return Ok(Tenant::anonymous());
        }
        Err("name the key's tenant: --authorization VALUE, --tenant-header VALUE, --anonymous or --tenant STORED".into())
    }

    fn query(&self) -> Result<String, String> {
        let tenant = self.tenant()?;
        Ok(format!(
            "tenant={}&method={}&route={}&key={}",
            encode(tenant.as_str()),
            encode(&self.method),
            encode(&self.route),
            encode(&self.key)
        ))
    }
}

pub(crate) async fn run(args: KeysArgs) -> Result<(), String> {
    let (method, path) = match &args.command {
        KeysCommand::List { limit } => (reqwest::Method::GET, format!("/keys?limit={limit}")),
        KeysCommand::Get(k) => (reqwest::Method::GET, format!("/keys/one?{}", k.query()?)),
        KeysCommand::Evict(k) => (reqwest::Method::DELETE, format!("/keys/one?{}", k.query()?)),
        KeysCommand::Takeovers => (reqwest::Method::GET, "/takeovers".to_owned()),
        KeysCommand::Stats => (reqwest::Method::GET, "/stats".to_owned()),
    };
    let base = args.admin.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(t) = &args.admin_token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin listener at {base}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("the admin listener's answer broke off: {e}"))?;
    if status == 200 {
        print!("{body}");
        return Ok(());
    }
    // A problem body: its detail is the one line to show.
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    Err(match status {
        401 => format!("the admin listener at {base} refused the token (401): pass --admin-token or set ONCELY_ADMIN_TOKEN"),
        _ => format!("{detail} ({status})"),
    })
}

/// Percent-encodes all but unreserved characters (RFC 3986).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encoding_leaves_only_unreserved() {
        assert_eq!(encode("/orders/7"), "%2Forders%2F7");
        assert_eq!(encode("a&b=c %"), "a%26b%3Dc%20%25");
        assert_eq!(encode("hdr:é"), "hdr%3A%C3%A9");
    }
}
