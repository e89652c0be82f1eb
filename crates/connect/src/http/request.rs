//! Requests to an API: sent, timed, retried with backoff, rate limited.

use super::*;

impl HttpConnector {
    /// Sends one request and classifies the answer: final, or transient
    /// (network errors, 5xx, 408, 429) with the API's `Retry-After`. A 401
    /// or 403 is an error at once, and later calls fail without a request.
    pub(super) async fn send_once(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Sent, ConnectorError> {
        let inner = &self.inner;
        if let Some(detail) = inner.refused.lock().expect("refusal").clone() {
            return Err(ConnectorError::Unauthorized {
                system: inner.system.clone(),
                detail,
            });
        }
        if let Some(l) = &inner.limiter {
            l.acquire().await;
        }
        let mut request = inner
            .client
            .request(method.clone(), format!("{}{}", inner.base, path))
            .query(query);
        if let Some((name, value)) = &inner.auth {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = match request.send().await {
            Ok(response) => {
                count_request(&inner.system, response.status().as_str());
                response
            }
            Err(e) => {
                count_request(&inner.system, "error");
                return Ok(Sent::Transient {
                    problem: format!("{e}"),
                    wait: None,
                    maybe_done: true,
                });
            }
        };
        let status = response.status();
        let wait = retry_after(response.headers());
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            // The answer was cut off: as if never answered.
            Err(e) => {
                return Ok(Sent::Transient {
                    problem: format!("{status}, then the answer broke off: {e}"),
                    wait: None,
                    maybe_done: true,
                });
            }
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let reply = Reply { status, body };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = format!(
                "{status} on {method} {path}: {}; check {}",
                reply.message(),
                inner.auth_hint
            );
            *inner.refused.lock().expect("refusal") = Some(detail.clone());
            return Err(ConnectorError::Unauthorized {
                system: inner.system.clone(),
                detail,
            });
        }
        // A server that does not implement the method or the protocol
        // version will not later: that is the definition's, not a fault
        // to wait out.
        let unsupported =
            status == StatusCode::NOT_IMPLEMENTED || status == StatusCode::HTTP_VERSION_NOT_SUPPORTED;
        if (status.is_server_error() && !unsupported)
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Ok(Sent::Transient {
                problem: format!("{status}: {}", reply.message()),
                wait,
                // A 429 was not performed; a 5xx or 408 may have been.
                maybe_done: status != StatusCode::TOO_MANY_REQUESTS,
            });
        }
        Ok(Sent::Final(reply))
    }

    /// Waits before attempt `attempt + 1`, or says the call gave up.
    pub(super) async fn back_off(
        &self,
        attempt: u32,
        method: &Method,
        path: &str,
        problem: &str,
        wait: Option<Duration>,
    ) -> Result<(), ConnectorError> {
        let inner = &self.inner;
        if attempt >= inner.settings.retries {
            return Err(ConnectorError::Unavailable {
                system: inner.system.clone(),
                request: format!("{method} {path}"),
                detail: format!("gave up after {} attempts; last: {problem}", attempt + 1),
            });
        }
        let backoff = inner.settings.backoff.saturating_mul(1 << attempt.min(16));
        let backoff = backoff.min(Duration::from_secs(30)).mul_f64(0.5 + jitter() / 2.0);
        let wait = wait.map_or(backoff, |w| w + backoff.mul_f64(0.1));
        tracing::debug!(system = %inner.system, request = %format!("{method} {path}"), %problem, ?wait, "retrying");
        syncd_metrics::metrics()
            .http_retries
            .get_or_create(&vec![("system", inner.system.clone())])
            .inc();
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sends one request, retrying transient failures with exponential
    /// backoff and jitter (or the API's `Retry-After`); answers the first
    /// final status.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ConnectorError> {
        let mut attempt = 0u32;
        loop {
            match self.send_once(&method, path, query, body, None).await? {
                Sent::Final(reply) => return Ok(reply),
                Sent::Transient { problem, wait, .. } => {
                    self.back_off(attempt, &method, path, &problem, wait).await?;
                    attempt += 1;
                }
            }
        }
    }

    /// An answer that is neither success nor a record's own fault.
    pub(super) fn unexpected(&self, method: &str, path: &str, reply: &Reply) -> ConnectorError {
        ConnectorError::Http {
            system: self.inner.system.clone(),
            request: format!("{method} {path}"),
            detail: format!("{}: {}", reply.status, reply.message()),
        }
    }

    /// Runs `calls` with the system's concurrency; answers in order. Calls
    /// finish in any order, so one waiting out a `Retry-After` holds up
    /// only its own slot.
    pub(super) async fn each<Fut: std::future::Future>(&self, calls: Vec<Fut>) -> Vec<Fut::Output> {
        let mut answers: Vec<(usize, Fut::Output)> = futures_util::stream::iter(
            calls
                .into_iter()
                .enumerate()
                .map(|(i, call)| async move { (i, call.await) }),
        )
        .buffer_unordered(self.inner.settings.concurrency)
        .collect()
        .await;
        answers.sort_unstable_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, a)| a).collect()
    }
}

/// Counts one request to `system` that ended with `status` (a code, or
/// `error` when no answer came).
fn count_request(system: &str, status: &str) {
    syncd_metrics::metrics()
        .http_requests
        .get_or_create(&vec![
            ("system", system.to_owned()),
            ("status", status.to_owned()),
        ])
        .inc();
}

/// One random number in [0, 1), for jitter.
pub(super) fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as seconds or as an HTTP date; capped at two minutes.
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = v.parse::<f64>() {
        Duration::from_secs_f64(secs.max(0.0))
    } else {
        let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (at - Utc::now()).to_std().unwrap_or_default()
    };
    Some(wait.min(Duration::from_secs(120)))
}
