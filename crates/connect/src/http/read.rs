//! Reading an API collection: pages of changes, records by id, presence.

use super::*;

impl HttpConnector {
    /// One page of a listing at `at` (a page number or a cursor token).
    pub(super) async fn list_page(
        &self,
        r: &HttpResource,
        filters: &[(String, String)],
        at: Option<&Value>,
    ) -> Result<(Vec<Value>, Option<Value>), ConnectorError> {
        let mut query: Vec<(String, String)> = r.query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        query.extend(filters.iter().cloned());
        let size = r.page_size.to_string();
        match &r.pagination {
            Pagination::Page {
                page_param,
                size_param,
                ..
            } => {
                let page = at.and_then(Value::as_u64).unwrap_or(1);
                query.push((page_param.clone(), page.to_string()));
                query.push((size_param.clone(), size));
            }
            Pagination::Cursor {
                cursor_param,
                size_param,
                ..
            } => {
                if let Some(token) = at {
                    query.push((cursor_param.clone(), value_text(token)));
                }
                query.push((size_param.clone(), size));
            }
        }
        let mut reply = self.call(Method::GET, &r.path, &query, None).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected("GET", &r.path, &reply));
        }
        let items = match reply.body.pointer_mut(&r.records).map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) => Vec::new(),
            _ => {
                return Err(ConnectorError::Http {
                    system: self.inner.system.clone(),
                    request: format!("GET {}", r.path),
                    detail: format!("the answer has no array of records at `{}`", r.records),
                });
            }
        };
        let next = match &r.pagination {
            Pagination::Page { has_more, .. } => {
                let page = at.and_then(Value::as_u64).unwrap_or(1);
                // Without a flag, on to the next page until one is empty: an
                // API may cap its pages below the size asked for, and a short
                // page is then no sign of the end.
                let more = match has_more {
                    Some(p) => reply.body.pointer(p).and_then(Value::as_bool).unwrap_or(false),
                    None => !items.is_empty(),
                };
                (more && !items.is_empty()).then(|| Value::from(page + 1))
            }
            Pagination::Cursor { next, .. } => match reply.body.pointer(next) {
                Some(Value::String(s)) if !s.is_empty() && !items.is_empty() => {
                    Some(Value::String(s.clone()))
                }
                Some(Value::Number(n)) if !items.is_empty() => Some(Value::Number(n.clone())),
                _ => None,
            },
        };
        Ok((items, next))
    }

    /// The listing key of an item, or why it has none.
    pub(super) fn key_of(r: &HttpResource, item: &Value) -> Result<ListKey, BadRow> {
        let id = item.get(&r.id_field).and_then(id_text);
        let time = match &r.updated_field {
            // No update times: every record is as old as any other.
            None => Ok(DateTime::UNIX_EPOCH),
            Some(field) => item
                .get(field)
                .and_then(parse_time)
                .ok_or_else(|| format!("field `{field}` holds no readable time")),
        };
        match (id, time) {
            (Some(id), Ok(t)) => Ok((t, id)),
            (Some(id), Err(reason)) => Err(BadRow { id, reason }),
            (None, _) => Err(BadRow {
                id: String::new(),
                reason: format!("a record without an id in field `{}`", r.id_field),
            }),
        }
    }

    /// An item as a record, each field converted to its kind; a value
    /// that is not of its field's kind makes the item bad. An API that
    /// keeps numbers as doubles may print one of a double's two shortest
    /// texts where syncd prints the other: its numbers are read as syncd
    /// prints them (`value::as_double_prints`).
    pub(super) fn record_of(&self, b: &TableBinding, item: &Value, key: ListKey) -> Result<Record, BadRow> {
        let exact = self.inner.settings.exact_numbers;
        let mut fields = Fields::new();
        for f in &b.fields {
            let raw = item.get(&f.column).cloned().unwrap_or(Value::Null);
            let raw = if exact {
                raw
            } else {
                syncd_core::value::as_double_prints(raw)
            };
            let v = syncd_core::value::read(f.kind, f.class, raw).map_err(|why| BadRow {
                id: key.1.clone(),
                reason: format!(
                    "system `{}`, {} `{}`: entity `{}`, field `{}`: {why}",
                    b.system, b.table, key.1, b.entity, f.cdm
                ),
            })?;
            fields.insert(f.cdm.clone(), v);
        }
        Ok(Record {
            id: key.1,
            fields,
            modified_at: key.0,
        })
    }

    /// Reads up to `limit` records changed after `after`, oldest first.
    ///
    /// Numbered pages shift when an earlier record changes, so a listing by
    /// page number moves on by time whenever it can: the next request asks
    /// for records changed since the last one taken, from page 1; only a run
    /// of records sharing one time is walked by page number. A listing that
    /// starts anew (the next run) takes again the records that share the
    /// last one's time, in case one arrived after it with a smaller id.
    pub async fn read_changes(
        &self,
        b: &TableBinding,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let Some(updated_field) = r.updated_field.as_deref() else {
            return self.read_whole(b, r, after, limit).await;
        };
        let pos: Option<ScanPos> = after.map(|c| {
            serde_json::from_value(c.id.clone()).unwrap_or(ScanPos {
                id: c.id.clone(),
                ..Default::default()
            })
        });
        let mut last: Option<ListKey> = after.and_then(|c| {
            let pos = pos.as_ref()?;
            Some((parse_time(&c.updated_at)?, id_text(&pos.id)?))
        });
        // Continue the listing the position is in, or start one at the
        // last record's time (inclusive).
        let (mut since, mut at, mut fresh) = match (&pos, after) {
            (Some(p), _) if p.since.is_some() => (p.since.clone(), p.at.clone(), false),
            (_, Some(c)) if !c.updated_at.is_null() => (Some(value_text(&c.updated_at)), None, true),
            _ => (None, None, false),
        };
        let by_page = matches!(r.pagination, Pagination::Page { .. });
        let mut page = ChangePage::default();
        let mut next = after.cloned();
        let mut resuming = at.is_some();
        let mut previous: Option<ListKey> = None;
        let mut previous_short = false;
        let mut advanced = false;
        let mut taken = 0u32;
        loop {
            let filters: Vec<(String, String)> =
                since.iter().map(|s| (r.since_param.clone(), s.clone())).collect();
            let (items, following) = match self.list_page(r, &filters, at.as_ref()).await {
                // A saved cursor token the API no longer takes: start a new
                // listing at the last record's time.
                Err(ConnectorError::Http { .. }) if resuming && !by_page => {
                    tracing::warn!(system = %self.inner.system, entity = %b.entity,
                        "the saved list cursor was refused; listing again from the last change");
                    since = after.map(|c| value_text(&c.updated_at));
                    (at, resuming) = (None, false);
                    continue;
                }
                other => other?,
            };
            let first = items.first().and_then(|i| Self::key_of(r, i).ok());
            // After a change moved records, a numbered page may start after
            // the last record read: step back.
            if resuming
                && let (Some(n), Some(last), Some(first)) = (
                    at.as_ref().and_then(Value::as_u64).filter(|n| *n > 1),
                    &last,
                    &first,
                )
                && compare_keys(first, last) == Ordering::Greater
            {
                at = Some(Value::from(n - 1));
                continue;
            }
            resuming = false;
            // An API that ignores the page or cursor parameter answers the
            // same page again and again.
            let repeated = match (&r.pagination, &at) {
                (Pagination::Page { .. }, Some(_)) => first.is_some() && previous == first,
                (Pagination::Cursor { .. }, Some(token)) => following.as_ref() == Some(token),
                _ => false,
            };
            if repeated {
                // An API that does not page answers its whole collection to
                // every page: when that is shorter than a page, it is all.
                if previous_short {
                    break;
                }
                return Err(self.same_page_twice(r));
            }
            previous = first;
            previous_short = items.len() < r.page_size as usize;
            let mut page_time: Option<chrono::DateTime<chrono::Utc>> = None;
            for item in &items {
                let key = match Self::key_of(r, item) {
                    Ok(k) => k,
                    Err(bad) => {
                        page.bad.push(bad);
                        continue;
                    }
                };
                // A listing in another order than oldest first: a record
                // older than the one before it would be taken for one read
                // already, and never synced.
                if page_time.is_some_and(|t| key.0 < t) {
                    return Err(ConnectorError::Http {
                        system: self.inner.system.clone(),
                        request: format!("GET {}", r.path),
                        detail: format!(
                            "the listing is not in the order of `{updated_field}`, oldest first (record `{}` \
                             comes after a later one): sort it so (`query = {{ _sort = \"{updated_field}\" }}` \
                             or the API's own parameter)",
                            key.1
                        ),
                    });
                }
                page_time = Some(key.0);
                let seen = last.as_ref().is_some_and(|l| {
                    if fresh {
                        key.0 < l.0 || key == *l
                    } else {
                        compare_keys(&key, l) != Ordering::Greater
                    }
                });
                if seen {
                    continue;
                }
                // The position moves forward only: a record taken again at
                // the start of a new listing leaves it where it was.
                if last
                    .as_ref()
                    .is_none_or(|l| compare_keys(&key, l) == Ordering::Greater)
                {
                    next = Some(Cursor {
                        updated_at: item.get(updated_field).cloned().unwrap_or(Value::Null),
                        id: serde_json::to_value(ScanPos {
                            id: Value::String(key.1.clone()),
                            since: since.clone(),
                            at: at.clone(),
                        })
                        .expect("positions serialize"),
                    });
                    last = Some(key.clone());
                    advanced = true;
                }
                self.take(b, item, key, &mut page);
                taken += 1;
                if taken == limit {
                    // The rest of this API page is read again next time,
                    // from the same position, and skipped up to here.
                    page.next = match (advanced, after, &pos) {
                        (false, Some(c), Some(p)) => Some(Cursor {
                            updated_at: c.updated_at.clone(),
                            id: serde_json::to_value(ScanPos {
                                id: p.id.clone(),
                                since: since.clone(),
                                at: at.clone(),
                            })
                            .expect("positions serialize"),
                        }),
                        _ => next,
                    };
                    dedupe(&mut page);
                    return Ok(page);
                }
            }
            fresh = false;
            match following {
                None => break,
                Some(n) => {
                    let moved_on = last
                        .as_ref()
                        .filter(|l| since.as_deref().and_then(since_time) < Some(l.0));
                    match moved_on {
                        // Go on by time, from page 1: numbered pages shift.
                        Some(l) if by_page => {
                            since = Some(
                                next.as_ref()
                                    .map(|c| value_text(&c.updated_at))
                                    .unwrap_or_else(|| format_time(l.0)),
                            );
                            at = None;
                        }
                        _ => at = Some(n),
                    }
                }
            }
        }
        // The listing ended: the next scan starts a new one.
        page.done = true;
        page.next = next.map(|mut c| {
            if let Ok(mut p) = serde_json::from_value::<ScanPos>(c.id.clone()) {
                p.since = None;
                p.at = None;
                c.id = serde_json::to_value(p).expect("positions serialize");
            }
            c
        });
        if page.records.is_empty() && page.deleted.is_empty() && after.is_none() {
            page.next = None;
        }
        dedupe(&mut page);
        Ok(page)
    }

    /// An API that ignores the page or cursor parameter answers the same
    /// page again and again: the listing stops with this.
    fn same_page_twice(&self, r: &HttpResource) -> ConnectorError {
        ConnectorError::Http {
            system: self.inner.system.clone(),
            request: format!("GET {}", r.path),
            detail: "the API answered the same page twice: check the collection's `pagination` \
                     settings against the API's parameters"
                .into(),
        }
    }

    /// A listed item into `page`: a deletion when it is marked deleted,
    /// else a record, or a bad row saying why it is not one.
    fn take(&self, b: &TableBinding, item: &Value, key: ListKey, page: &mut ChangePage) {
        if b.marked_deleted(|c| item.get(c)) {
            page.deleted.push(key.1);
        } else {
            match self.record_of(b, item, key) {
                Ok(record) => page.records.push(record),
                Err(bad) => page.bad.push(bad),
            }
        }
    }

    /// Reads the next pages of a collection without update times: every
    /// scan lists it whole, in the order of its `query`, and the engine
    /// finds what changed by comparing values with the last synced ones. The
    /// position is the page or cursor token the listing goes on from; a
    /// finished listing leaves none, so the next scan starts a new one.
    async fn read_whole(
        &self,
        b: &TableBinding,
        r: &HttpResource,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        let position = |at: Option<Value>| Cursor {
            updated_at: Value::Null,
            id: serde_json::to_value(ScanPos {
                at,
                ..Default::default()
            })
            .expect("positions serialize"),
        };
        let mut at = after
            .and_then(|c| serde_json::from_value::<ScanPos>(c.id.clone()).ok())
            .and_then(|p| p.at);
        let mut page = ChangePage::default();
        let mut previous: Option<String> = None;
        let mut previous_short = false;
        let mut taken = 0usize;
        loop {
            let (items, following) = self.list_page(r, &[], at.as_ref()).await?;
            let first = items.first().and_then(|i| i.get(&r.id_field)).and_then(id_text);
            if at.is_some() && first.is_some() && first == previous {
                // (As in a change scan: a collection shorter than a page,
                // answered whole to every page, is all there.)
                if previous_short {
                    page.done = true;
                    page.next = Some(position(None));
                    break;
                }
                return Err(self.same_page_twice(r));
            }
            previous = first;
            previous_short = items.len() < r.page_size as usize;
            taken += items.len();
            for item in &items {
                let key = match Self::key_of(r, item) {
                    Ok(k) => k,
                    Err(bad) => {
                        page.bad.push(bad);
                        continue;
                    }
                };
                self.take(b, item, key, &mut page);
            }
            match following {
                None => {
                    page.done = true;
                    page.next = Some(position(None));
                    break;
                }
                Some(n) if taken + r.page_size as usize > limit as usize => {
                    page.next = Some(position(Some(n)));
                    break;
                }
                Some(n) => at = Some(n),
            }
        }
        dedupe(&mut page);
        Ok(page)
    }

    /// GETs each of `ids`: the items found, and ids gone (404 or 410).
    pub(super) async fn get_each(
        &self,
        r: &HttpResource,
        ids: &[String],
    ) -> Result<Vec<Option<Value>>, ConnectorError> {
        let answers = self
            .each(
                ids.iter()
                    .map(|id| async move {
                        let path = Self::item_path(r, id);
                        let mut reply = self.call(Method::GET, &path, &[], None).await?;
                        if reply.status == StatusCode::NOT_FOUND || reply.status == StatusCode::GONE {
                            return Ok(None);
                        }
                        if !reply.status.is_success() {
                            return Err(self.unexpected("GET", &path, &reply));
                        }
                        // A record not where the definition says is an
                        // error, never a record that is gone.
                        match reply.body.pointer_mut(&r.record).map(Value::take) {
                            Some(item @ Value::Object(_)) => Ok(Some(item)),
                            _ => Err(self.no_record("GET", &path, r)),
                        }
                    })
                    .collect(),
            )
            .await;
        answers.into_iter().collect()
    }

    /// The records with `ids`; ids that do not exist are absent.
    /// The records with `ids`. A record without a readable update time is
    /// still read (its time the Unix epoch), to be compared by value.
    pub async fn read_by_ids(&self, b: &TableBinding, ids: &[String]) -> Result<ByIds, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let mut found = ByIds::default();
        for item in self.get_each(r, ids).await?.into_iter().flatten() {
            if b.marked_deleted(|c| item.get(c)) {
                continue;
            }
            let key = match Self::key_of(r, &item) {
                Ok(key) => key,
                Err(bad) if !bad.id.is_empty() => (DateTime::UNIX_EPOCH, bad.id),
                Err(bad) => {
                    found.bad.push(bad);
                    continue;
                }
            };
            match self.record_of(b, &item, key) {
                Ok(record) => found.records.push(record),
                Err(bad) => found.bad.push(bad),
            }
        }
        Ok(found)
    }

    /// Which of `ids` exist and are not marked deleted.
    pub async fn present(&self, b: &TableBinding, ids: &[String]) -> Result<HashSet<String>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let found = self.get_each(r, ids).await?;
        Ok(ids
            .iter()
            .zip(found)
            .filter(|(_, item)| item.as_ref().is_some_and(|i| !b.marked_deleted(|c| i.get(c))))
            .map(|(id, _)| id.clone())
            .collect())
    }
}

pub(super) fn compare_keys(a: &ListKey, b: &ListKey) -> Ordering {
    a.0.cmp(&b.0)
        .then_with(|| match (a.1.parse::<i64>(), b.1.parse::<i64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.1.cmp(&b.1),
        })
}

/// A value as text for a URL: strings as they are, numbers printed.
pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A record listed twice in one page (changed while it was being listed,
/// so a keyset cursor shows it again) is kept once, as last seen.
pub(super) fn dedupe(page: &mut ChangePage) {
    let mut seen = HashSet::new();
    let mut records: Vec<Record> = std::mem::take(&mut page.records)
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.id.clone()))
        .collect();
    records.reverse();
    page.records = records;
    let mut seen = HashSet::new();
    page.deleted.retain(|id| seen.insert(id.clone()));
}

/// The time a `since` filter's text says: as a time is written, or the
/// number an API's times are (Unix seconds, `Date.now()`'s milliseconds).
/// Read as text alone, digits said no time, and a listing of more records
/// of one such time than a page began again at page 1 forever.
fn since_time(since: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    parse_time(&Value::String(since.to_owned()))
        .or_else(|| since.parse::<i64>().ok().and_then(syncd_core::value::epoch_time))
}
