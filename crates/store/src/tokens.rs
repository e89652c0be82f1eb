//! API tokens: created (only their hash is kept), checked, listed and revoked.

use super::*;

impl Store {
    /// Creates an API token for `principal` and returns it; only its hash
    /// is stored, so this is the one time it can be read.
    pub async fn create_token(&self, principal: &Principal) -> Result<String, StoreError> {
        Ok(self.create_token_until(principal, None).await?.0)
    }

    /// [`create_token`](Self::create_token), valid until `expires_at` when
    /// given; answers the token and what is stored of it.
    pub async fn create_token_until(
        &self,
        principal: &Principal,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(String, TokenInfo), StoreError> {
        self.create_token_for(principal, expires_at, None).await
    }

    /// [`create_token_until`](Self::create_token_until) for a named
    /// `holder`, whose name the API records the decisions it makes under.
    pub async fn create_token_for(
        &self,
        principal: &Principal,
        expires_at: Option<DateTime<Utc>>,
        holder: Option<&str>,
    ) -> Result<(String, TokenInfo), StoreError> {
        // 256 bits straight from the operating system's generator (uuid's
        // v4 ids come from a fast in-process one).
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random source");
        let token = format!("syncd_{}", hex::encode(secret));
        let info = TokenInfo {
            id: Uuid::new_v4(),
            prefix: token[..TOKEN_PREFIX_LEN].to_owned(),
            tenant: principal.tenant().map(TenantId::as_str).unwrap_or("").to_owned(),
            admin: matches!(principal, Principal::Admin),
            created_at: Utc::now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
            holder: holder.map(str::to_owned),
        };
        on_backend!(self, b => b.insert_token(&info, &token_hash(&token)).await)?;
        Ok((token, info))
    }

    /// What `token` may do: the principal it speaks for, or why it may not
    /// (unknown, revoked, expired). Notes its use, at most once a minute.
    pub async fn authenticate(&self, token: &str) -> Result<TokenCheck, StoreError> {
        Ok(self.check_token(token).await?.0)
    }

    /// [`authenticate`](Self::authenticate), with the token's holder.
    pub async fn check_token(&self, token: &str) -> Result<(TokenCheck, Option<String>), StoreError> {
        let found = on_backend!(self, b => b.tokens(Some(&token_hash(token))).await)?;
        let Some(t) = found.into_iter().next() else {
            return Ok((TokenCheck::Unknown, None));
        };
        let now = Utc::now();
        if let Some(at) = t.revoked_at {
            return Ok((TokenCheck::Revoked { prefix: t.prefix, at }, None));
        }
        if let Some(at) = t.expires_at.filter(|at| *at <= now) {
            return Ok((TokenCheck::Expired { prefix: t.prefix, at }, None));
        }
        if t.last_used_at
            .is_none_or(|at| now - at > chrono::Duration::minutes(1))
        {
            // Noting the use is a courtesy to operators: failing to write it
            // must not refuse a valid token.
            if let Err(e) = on_backend!(self, b => b.set_token_time(t.id, false, now).await) {
                tracing::warn!(error = %e, "could not note a token's use");
            }
        }
        let principal = match t.admin {
            true => Principal::Admin,
            false => Principal::Tenant(TenantId(t.tenant)),
        };
        Ok((TokenCheck::Valid(principal), t.holder))
    }

    /// Every token, oldest first, as stored: never the secret.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        on_backend!(self, b => b.tokens(None).await)
    }

    /// Revokes the token named by its prefix (or id): refused at once
    /// afterwards. `None` when no token has that name.
    pub async fn revoke_token(&self, name: &str) -> Result<Option<TokenInfo>, StoreError> {
        let name = name.trim();
        let mut matching: Vec<TokenInfo> = self
            .list_tokens()
            .await?
            .into_iter()
            .filter(|t| (!t.prefix.is_empty() && t.prefix == name) || t.id.to_string() == name)
            .collect();
        let Some(mut t) = matching.pop() else {
            return Ok(None);
        };
        if !matching.is_empty() {
            return Err(StoreError::AmbiguousToken {
                name: name.to_owned(),
            });
        }
        let now = Utc::now();
        if t.revoked_at.is_none() {
            on_backend!(self, b => b.set_token_time(t.id, true, now).await)?;
            t.revoked_at = Some(now);
        }
        Ok(Some(t))
    }
}
