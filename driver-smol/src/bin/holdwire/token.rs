//! Resolving the shared token from `--token`, `HOLDWIRE_TOKEN` or `--token-file`.

use holdwire_smol::proto::Token;

use crate::TokenArgs;

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
