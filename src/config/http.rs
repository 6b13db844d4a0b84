//! `[http]`: where the operations endpoint listens.

use super::reader::Section;

/// `[http]`: the operations endpoint (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `listen`: the address to serve on; `None` (an empty string) turns the endpoint off.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9108))) }
    }
}

/// `[http]`.
pub(super) fn parse_http(table: &toml::Table, http: &mut HttpConfig, problems: &mut Vec<String>) {
    let mut section = Section::new(table, "http");
    if let Some(listen) = section.string("listen", problems) {
        match parse_listen(&listen) {
            Ok(address) => http.listen = address,
            Err(why) => problems.push(format!("http.listen: {listen:?} {why}")),
        }
    }
    section.finish(problems);
}

/// `http.listen`: empty for no endpoint, else an IP address and a port
/// (`127.0.0.1:9108`, `[::1]:9108`, `0.0.0.0:9108`; port 0 picks a free one).
/// Names are not resolved: the endpoint binds where it is told, nowhere else.
fn parse_listen(text: &str) -> Result<Option<std::net::SocketAddr>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| "is not an IP address and port such as \"127.0.0.1:9108\" (or \"\" for none)")
}
