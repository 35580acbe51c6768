use super::future::Ctx;
use crate::entry::Entry;
use crate::store::StoreFuture;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// HTTP mode: when `entry` is the variant record of the URL being looked up, points `ctx` at
/// the request's variant and returns its lookup.
pub(super) fn follow_variant(
    ctx: &mut Ctx,
    entry: &Entry,
) -> Option<StoreFuture<Option<Arc<Entry>>>> {
    if !ctx.policy.http || ctx.primary.is_some() {
        return None;
    }
    let names = crate::http::record_names(entry, &ctx.full)?;
    let request = ctx.request_headers.as_ref()?;
    let mut vfull = ctx.full.to_string();
    crate::http::push_variant(&mut vfull, &names, request);
    let vkey = ctx.stash().stored_key(&vfull);
    let primary = (
        std::mem::replace(&mut ctx.full, vfull.into()),
        std::mem::replace(&mut ctx.key, vkey.clone()),
    );
    ctx.primary = Some(primary);
    ctx.varied = names;
    ctx.variants = Some(entry.body().clone());
    Some(ctx.stash().store().get(vkey))
}

/// What storing a variant takes: its full and stored keys, the record to store under the
/// URL's key and for how long, and the stored keys of the variants it pushes out of the
/// policy's bound (the oldest).
pub(super) struct Variant {
    pub(super) full: Arc<str>,
    pub(super) key: Arc<str>,
    pub(super) record: Arc<Entry>,
    pub(super) record_keep: Duration,
    pub(super) evicted: Vec<String>,
}

/// HTTP mode, a response with `Vary` to be kept `keep`: see [`Variant`].
pub(super) fn variant_keys(ctx: &Ctx, headers: &HeaderMap, keep: Duration) -> Option<Variant> {
    let request = ctx.request_headers.as_ref()?;
    let names = crate::http::vary_names(headers)?;
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| !ctx.policy.keyed_headers.iter().any(|h| h.as_str() == n))
        .collect();
    if names.is_empty() {
        return None;
    }
    let (pfull, pkey) = ctx
        .primary
        .clone()
        .unwrap_or_else(|| (ctx.full.clone(), ctx.key.clone()));
    let mut vfull = pfull.to_string();
    crate::http::push_variant(&mut vfull, &names, request);
    let vkey = ctx.stash().stored_key(&vfull);
    let mut record_headers = HeaderMap::new();
    record_headers.insert(
        crate::http::VARY_RECORD,
        HeaderValue::from_str(&names.join(", ")).ok()?,
    );
    // The variants kept, oldest first: this one moves to the end; past the bound, the oldest
    // go. The list is the record's as it is now, in this instance's memory (read and written
    // back with no wait between: concurrent answers for other variants add to it instead of
    // replacing it), or else as the request found it. (Instances storing variants of one URL
    // at once may each write their own list: the bound then holds per instance, and a
    // variant left out of the list expires with its TTL.)
    let now = ctx.stash().now();
    let current = ctx
        .stash()
        .store()
        .get_local(&pkey)
        .flatten()
        .filter(|r| crate::http::record_names(r, &pfull).is_some());
    // The record outlives every variant it lists.
    let record_keep = current
        .as_ref()
        .and_then(|r| r.fresh_until().duration_since(now).ok())
        .map_or(keep, |left| left.max(keep));
    let seen = match &current {
        Some(record) => record.body().as_ref(),
        None => ctx.variants.as_deref().unwrap_or_default(),
    };
    let mut kept: Vec<&str> = std::str::from_utf8(seen)
        .unwrap_or_default()
        .lines()
        .filter(|k| !k.is_empty() && *k != &*vkey)
        .collect();
    let excess = (kept.len() + 1).saturating_sub(ctx.policy.max_variants);
    let evicted: Vec<String> = kept.drain(..excess).map(str::to_owned).collect();
    kept.push(&vkey);
    let body = Bytes::from(kept.join("\n"));
    let record = Entry::new(
        crate::http::record_key(&pfull),
        StatusCode::OK,
        record_headers,
        body,
    )
    .with_times(now, record_keep);
    Some(Variant {
        full: vfull.into(),
        key: vkey,
        record: Arc::new(record),
        record_keep,
        evicted,
    })
}
