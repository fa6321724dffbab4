//! Resolving the shared token from `--token`, `HOLDWIRE_TOKEN` or `--token-file`.

use holdwire_smol::proto::Token;

use crate::TokenArgs;

/// The environment variable holding the token when no token option is given.
pub const TOKEN_ENV: &str = "HOLDWIRE_TOKEN";

/// The token, `None` with `--no-auth`, or a configuration error.
pub fn resolve(args: &TokenArgs) -> Result<Option<Token>, String> {
    if args.no_auth {
        tracing::warn!(
            "authentication is off (--no-auth): anyone who learns a session id can inject data, \
             and anyone on the path can read it"
        );
        return Ok(None);
    }
    let secret = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
            text.lines().next().unwrap_or("").to_string()
        }
        // The environment is read here rather than by clap, which would count it as a
        // `--token` given on the command line and refuse `--token-file` or `--no-auth`.
        (None, None) if std::env::var_os(TOKEN_ENV).is_some() => {
            std::env::var(TOKEN_ENV).map_err(|_| format!("{TOKEN_ENV} is not valid UTF-8"))?
        }
        (None, None) => {
            return Err(
                "a token is required: --token, HOLDWIRE_TOKEN or --token-file (or --no-auth)"
                    .to_string(),
            )
        }
    };
    let secret = secret.trim();
    if secret.is_empty() {
        return Err("the token is empty".to_string());
    }
    Ok(Some(Token::new(secret.as_bytes())))
}
