//! Who a pull is: the CRI `AuthConfig` equivalent ([`Credentials`]), or
//! else the config's `registry.hosts.<host>.username/password`, or
//! anonymous. `oci-client` does the basic-auth and bearer-token dances;
//! berth adds the OAuth2 refresh-token exchange of identity tokens.
//!
//! A pull's own credentials go only to the image's registry: a mirror is
//! another party, and gets only the credentials configured for it.

use std::fmt;

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::error::{Target, chain, excerpt};
use super::{Endpoint, Registries, RegistryError};

/// `client_id` berth presents to token services.
const CLIENT_ID: &str = "berth";

/// Credentials for one pull, as the CRI `AuthConfig` carries them (empty
/// strings are unset). Used in this order: `registry_token`, then
/// `identity_token`, then `username`/`password`, then `auth`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for basic auth or a token service.
    pub username: String,
    /// Password for `username`.
    pub password: String,
    /// Base64 of `username:password` (a Docker config's `auth`).
    pub auth: String,
    /// OAuth2 refresh token, exchanged at the registry's token service for
    /// an access token.
    pub identity_token: String,
    /// Bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |value: &str| if value.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

/// What a pull authenticates with at one endpoint.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    Basic { username: String, password: String },
    Bearer(String),
    IdentityToken(String),
}

impl Credentials {
    /// The secret these credentials stand for; `None` when all are empty.
    pub(crate) fn secret(&self) -> Result<Option<Secret>, RegistryError> {
        if !self.registry_token.is_empty() {
            return Ok(Some(Secret::Bearer(self.registry_token.clone())));
        }
        if !self.identity_token.is_empty() {
            return Ok(Some(Secret::IdentityToken(self.identity_token.clone())));
        }
        if !self.username.is_empty() {
            return Ok(Some(Secret::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            }));
        }
        if !self.auth.is_empty() {
            return decode_auth(&self.auth).map(Some);
        }
        Ok(None)
    }
}

/// `base64("user:password")`, as in a Docker config file.
fn decode_auth(auth: &str) -> Result<Secret, RegistryError> {
    use base64::Engine as _;
    let invalid = |reason: &str| RegistryError::InvalidCredentials {
        reason: format!("`auth` {reason}"),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| invalid("is not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("does not decode to UTF-8"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| invalid("does not decode to user:password"))?;
    if username.is_empty() {
        return Err(invalid("has an empty user name"));
    }
    Ok(Secret::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

impl Registries {
    /// How to authenticate at `endpoint`: the pull's own secret at the
    /// image's registry, else the endpoint's configured user, else nobody.
    pub(crate) async fn registry_auth(
        &self,
        endpoint: &Endpoint,
        secret: Option<&Secret>,
        target: &Target,
    ) -> Result<RegistryAuth, RegistryError> {
        let configured = self.settings(&endpoint.settings_key).and_then(|s| {
            Some(Secret::Basic {
                username: s.username.clone()?,
                password: s.password.clone().unwrap_or_default(),
            })
        });
        let secret = secret.filter(|_| !endpoint.mirror).cloned().or(configured);
        Ok(match secret {
            None => RegistryAuth::Anonymous,
            Some(Secret::Basic { username, password }) => RegistryAuth::Basic(username, password),
            Some(Secret::Bearer(token)) => RegistryAuth::Bearer(token),
            Some(Secret::IdentityToken(token)) => {
                match self
                    .exchange_identity_token(endpoint, &token, target)
                    .await?
                {
                    Some(access) => RegistryAuth::Bearer(access),
                    None => RegistryAuth::Anonymous,
                }
            }
        })
    }

    /// Trades an identity (refresh) token for an access token at the token
    /// service the registry names, as Docker does (OAuth2
    /// `grant_type=refresh_token`). `None` when the registry needs no auth.
    async fn exchange_identity_token(
        &self,
        endpoint: &Endpoint,
        token: &str,
        target: &Target,
    ) -> Result<Option<String>, RegistryError> {
        let settings = self.settings(&endpoint.settings_key);
        let key = format!("registry.hosts.{:?}", endpoint.settings_key);
        let http = self.http_client(settings, &endpoint.host, &key)?;
        let exchange = async {
            let ping = http
                .get(format!("{}/v2/", endpoint.url))
                .send()
                .await
                .map_err(|e| target.transport(chain(&e)))?;
            if ping.status().is_success() {
                return Ok(None);
            }
            if ping.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Err(target.transport(format!("GET /v2/ answered {}", ping.status())));
            }
            let challenge = ping
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .find_map(BearerChallenge::parse)
                .ok_or_else(|| {
                    target.unauthorized(
                        "the registry offers no token service, so an identity token cannot be used",
                    )
                })?;
            let scope = format!("repository:{}:pull", endpoint.repository);
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", CLIENT_ID),
                ("scope", &scope),
            ];
            if let Some(service) = &challenge.service {
                form.push(("service", service));
            }
            let answer = http
                .post(&challenge.realm)
                .form(&form)
                .send()
                .await
                .map_err(|e| target.transport(chain(&e)))?;
            let status = answer.status();
            let body = answer
                .text()
                .await
                .map_err(|e| target.transport(chain(&e)))?;
            if !status.is_success() {
                return Err(target.unauthorized(format!(
                    "the token service {} refused the identity token: HTTP {status}: {}",
                    challenge.realm,
                    excerpt(&body)
                )));
            }
            let answer: TokenAnswer = serde_json::from_str(&body).unwrap_or_default();
            answer
                .access_token
                .or(answer.token)
                .filter(|t| !t.is_empty())
                .map(Some)
                .ok_or_else(|| {
                    target.unauthorized(format!(
                        "the token service {} answered without a token",
                        challenge.realm
                    ))
                })
        };
        tokio::time::timeout(self.progress_timeout, exchange)
            .await
            .map_err(|_| target.timeout(self.progress_timeout))?
    }
}

/// A token service's answer.
#[derive(Debug, Default, Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token: Option<String>,
}

/// `WWW-Authenticate: Bearer realm="…",service="…"`.
#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    fn parse(header: &str) -> Option<BearerChallenge> {
        let (scheme, params) = header.trim().split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(params);
        let get = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        Some(BearerChallenge {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
        })
    }
}

/// `key=value, key="quoted \"value\""` pairs (RFC 7235 auth-params).
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            return params;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(username: &str, password: &str) -> Option<Secret> {
        Some(Secret::Basic {
            username: username.into(),
            password: password.into(),
        })
    }

    #[test]
    fn credentials_are_used_in_docker_order() {
        let all = Credentials {
            username: "u".into(),
            password: "p".into(),
            auth: "YTpi".into(), // a:b
            identity_token: "refresh".into(),
            registry_token: "bearer".into(),
        };
        assert!(all.secret().expect("valid") == Some(Secret::Bearer("bearer".into())));
        let c = Credentials {
            registry_token: String::new(),
            ..all.clone()
        };
        assert!(c.secret().expect("valid") == Some(Secret::IdentityToken("refresh".into())));
        let c = Credentials {
            identity_token: String::new(),
            ..c
        };
        assert!(c.secret().expect("valid") == basic("u", "p"));
        let c = Credentials {
            username: String::new(),
            ..c
        };
        assert!(c.secret().expect("valid") == basic("a", "b"));
        assert!(Credentials::default().secret().expect("valid").is_none());
    }

    #[test]
    fn auth_field_is_base64_user_colon_password() {
        let secret = |auth: &str| {
            Credentials {
                auth: auth.into(),
                ..Credentials::default()
            }
            .secret()
        };
        // "user:pa:ss" — the password may hold ':'.
        assert!(secret("dXNlcjpwYTpzcw==").expect("valid") == basic("user", "pa:ss"));
        for (auth, reason) in [
            ("not base64!", "is not base64"),
            ("dXNlcg==", "does not decode to user:password"), // "user"
            ("OnB3", "has an empty user name"),               // ":pw"
            ("//79", "does not decode to UTF-8"),
        ] {
            let Err(err) = secret(auth) else {
                panic!("{auth}: accepted");
            };
            assert!(err.to_string().contains(reason), "{auth}: {err}");
            assert!(matches!(err, RegistryError::InvalidCredentials { .. }));
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
            registry_token: "tok".into(),
            ..Credentials::default()
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[test]
    fn parses_bearer_challenges() {
        let cases = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                Some(("https://auth.docker.io/token", Some("registry.docker.io"))),
            ),
            (
                r#"bearer  service="a,b" , realm="http://x/t?q=\"1\"",scope="repository:x:pull""#,
                Some((r#"http://x/t?q="1""#, Some("a,b"))),
            ),
            (
                "Bearer realm=http://x/token",
                Some(("http://x/token", None)),
            ),
            (r#"Basic realm="registry""#, None),
            (r#"Bearer service="x""#, None),
            ("Bearer", None),
        ];
        for (header, expected) in cases {
            let parsed = BearerChallenge::parse(header);
            let expected = expected.map(|(realm, service)| BearerChallenge {
                realm: realm.into(),
                service: service.map(Into::into),
            });
            assert_eq!(parsed, expected, "{header}");
        }
    }
}
