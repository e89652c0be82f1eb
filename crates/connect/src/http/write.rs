//! Writing to an API collection: creates (found again by key after a crash), updates, deletes and archives.

use super::*;

impl HttpConnector {
    /// The body of a create or update: the fields under their API names.
    pub(super) fn body_of(b: &TableBinding, fields: &Fields) -> serde_json::Map<String, Value> {
        b.fields
            .iter()
            .filter_map(|f| fields.get(&f.cdm).map(|v| (f.column.clone(), v.clone())))
            .collect()
    }

    /// Why the API cannot be sent `fields` as they are: a number a double
    /// would change, unless the system keeps numbers exactly (see
    /// `HttpSystem::exact_numbers`). Nothing is sent then: stored rounded,
    /// the value would come back as an edit and be synced over the original.
    pub fn cannot_hold(&self, b: &TableBinding, fields: &Fields) -> Option<String> {
        if self.inner.settings.exact_numbers {
            return None;
        }
        b.fields.iter().find_map(|f| {
            let n = fields.get(&f.cdm).and_then(syncd_core::value::beyond_double)?;
            Some(format!(
                "system `{}`: entity `{}`, field `{}` (`{}`): {n} is not kept by an API that reads numbers as \
                 doubles (JSON's interoperable range, RFC 8259); set `numbers = \"exact\"` on the system if it \
                 keeps every number as sent",
                self.inner.system, b.entity, f.cdm, f.column
            ))
        })
    }

    /// The id of the record created earlier with `key`, found by the
    /// external-id field.
    pub(super) async fn find_key(
        &self,
        r: &HttpResource,
        field: &str,
        key: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let filters = [(field.to_owned(), key.to_owned())];
        let (items, _) = self.list_page(r, &filters, None).await?;
        Ok(items
            .iter()
            .find(|i| i.get(field).and_then(id_text).as_deref() == Some(key))
            .and_then(|i| i.get(&r.id_field))
            .and_then(id_text))
    }

    /// Ids of records created earlier with each of `keys`, found by the
    /// external-id field (none without one).
    pub async fn find_by_keys(
        &self,
        b: &TableBinding,
        keys: &[String],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let Some(field) = &r.external_id_field else {
            return Ok(HashMap::new());
        };
        let found = self
            .each(
                keys.iter()
                    .map(|key| async move {
                        Ok::<_, ConnectorError>(
                            self.find_key(r, field, key).await?.map(|id| (key.clone(), id)),
                        )
                    })
                    .collect(),
            )
            .await;
        let mut out = HashMap::new();
        for f in found {
            out.extend(f?);
        }
        Ok(out)
    }

    /// An answer with no record where the definition says it is.
    pub(super) fn no_record(&self, method: &str, path: &str, r: &HttpResource) -> ConnectorError {
        ConnectorError::Http {
            system: self.inner.system.clone(),
            request: format!("{method} {path}"),
            detail: format!(
                "the answer has no record (with field `{}`) at `{}`: check the collection's `record` and \
                 `id_field`",
                r.id_field, r.record
            ),
        }
    }

    /// Whether a 4xx is the record's own fault (the API refused its data),
    /// as opposed to the definition's or the system's (a wrong path or
    /// method), which stops the step.
    pub(super) fn refused_record(status: StatusCode) -> bool {
        matches!(status.as_u16(), 400 | 409 | 412 | 413 | 422)
    }

    /// Creates one record: `POST` with its idempotency key, retried on
    /// transient failures. Before sending again a request the API may have
    /// performed (a dropped connection, a 5xx), it looks the record up by
    /// the external-id field, for APIs that do not honour the key.
    pub(super) async fn create_one(
        &self,
        b: &TableBinding,
        r: &HttpResource,
        new: &NewRecord,
    ) -> Result<Result<String, String>, ConnectorError> {
        if let Some(why) = self.cannot_hold(b, &new.fields) {
            return Ok(Err(why));
        }
        let mut body = Self::body_of(b, &new.fields);
        if let Some(field) = &r.external_id_field {
            body.insert(field.clone(), Value::String(new.key.clone()));
        }
        let body = Value::Object(body);
        let mut attempt = 0u32;
        let reply = loop {
            match self
                .send_once(&Method::POST, &r.path, &[], Some(&body), Some(&new.key))
                .await?
            {
                Sent::Final(reply) => break reply,
                Sent::Transient {
                    problem,
                    wait,
                    maybe_done,
                } => {
                    self.back_off(attempt, &Method::POST, &r.path, &problem, wait)
                        .await?;
                    attempt += 1;
                    if let (true, Some(field)) = (maybe_done, &r.external_id_field)
                        && let Some(id) = self.find_key(r, field, &new.key).await?
                    {
                        return Ok(Ok(id));
                    }
                }
            }
        };
        if Self::refused_record(reply.status) {
            return Ok(Err(format!("{}: {}", reply.status, reply.message())));
        }
        if !reply.status.is_success() {
            return Err(self.unexpected("POST", &r.path, &reply));
        }
        match reply
            .body
            .pointer(&r.record)
            .and_then(|rec| rec.get(&r.id_field))
            .and_then(id_text)
        {
            Some(id) => Ok(Ok(id)),
            None => Err(self.no_record("POST", &r.path, r)),
        }
    }

    /// Creates `records`, each with its idempotency key as `Idempotency-Key`
    /// (and in the external-id field), and answers each one's new id, or the
    /// API's reason when it refused that record's data (400, 409, 422...).
    pub async fn create(
        &self,
        b: &TableBinding,
        records: &[NewRecord],
    ) -> Result<Vec<Result<String, String>>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let answers = self
            .each(records.iter().map(|new| self.create_one(b, r, new)).collect())
            .await;
        answers.into_iter().collect()
    }

    /// Writes `fields` to each existing record; answers the records the API
    /// refused (their data, or gone), with its reason. With `PUT`, the
    /// record is read first and sent whole, so fields syncd does not sync
    /// keep their values.
    pub async fn update(
        &self,
        b: &TableBinding,
        records: &[(String, Fields)],
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let put = r.update_method == "PUT";
        let method = if put { Method::PUT } else { Method::PATCH };
        let answers = self
            .each(
                records
                    .iter()
                    .map(|(id, fields)| {
                        let method = method.clone();
                        async move {
                            if let Some(why) = self.cannot_hold(b, fields) {
                                return Ok(Some((id.clone(), why)));
                            }
                            let path = Self::item_path(r, id);
                            let mut body = Self::body_of(b, fields);
                            if put {
                                let Some(Some(Value::Object(mut whole))) =
                                    self.get_each(r, std::slice::from_ref(id)).await?.pop()
                                else {
                                    return Ok(Some((
                                        id.clone(),
                                        "404 Not Found: the record is gone".into(),
                                    )));
                                };
                                whole.append(&mut body);
                                body = whole;
                            }
                            let reply = self
                                .call(method.clone(), &path, &[], Some(&Value::Object(body)))
                                .await?;
                            if Self::refused_record(reply.status)
                                || reply.status == StatusCode::NOT_FOUND
                                || reply.status == StatusCode::GONE
                            {
                                return Ok(Some((
                                    id.clone(),
                                    format!("{}: {}", reply.status, reply.message()),
                                )));
                            }
                            if !reply.status.is_success() {
                                return Err(self.unexpected(method.as_str(), &path, &reply));
                            }
                            Ok(None)
                        }
                    })
                    .collect(),
            )
            .await;
        let mut refused = Vec::new();
        for a in answers {
            refused.extend(a?);
        }
        Ok(refused)
    }

    /// Deletes each of `ids`; one already gone counts as deleted.
    pub async fn delete(&self, b: &TableBinding, ids: &[String]) -> Result<(), ConnectorError> {
        let r = self.resource(&b.entity)?;
        let answers = self
            .each(
                ids.iter()
                    .map(|id| async move {
                        let path = Self::item_path(r, id);
                        let reply = self.call(Method::DELETE, &path, &[], None).await?;
                        if reply.status.is_success()
                            || reply.status == StatusCode::NOT_FOUND
                            || reply.status == StatusCode::GONE
                        {
                            Ok(())
                        } else {
                            Err(self.unexpected("DELETE", &path, &reply))
                        }
                    })
                    .collect(),
            )
            .await;
        answers.into_iter().collect()
    }

    /// Sets `field` to the time of archiving on each of `ids`.
    pub async fn archive(
        &self,
        b: &TableBinding,
        ids: &[String],
        field: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectorError> {
        let r = self.resource(&b.entity)?;
        let body = serde_json::json!({ field: format_time(now) });
        let answers = self
            .each(
                ids.iter()
                    .map(|id| {
                        let body = &body;
                        async move {
                            let path = Self::item_path(r, id);
                            let reply = self.call(Method::PATCH, &path, &[], Some(body)).await?;
                            if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
                                Ok(())
                            } else {
                                Err(self.unexpected("PATCH", &path, &reply))
                            }
                        }
                    })
                    .collect(),
            )
            .await;
        answers.into_iter().collect()
    }
}
