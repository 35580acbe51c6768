use super::body::{CacheBody, Capture};
use super::future::Ctx;
use super::hit::status_value;
use super::vary::variant_keys;
use crate::headers::{self, CACHE_STATUS};
use crate::plumbing::{CacheHint, Collapsed, Exchange, LeaseSlot};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use std::task::Context;
use std::time::Duration;

/// The rule of what may be stored for others, for this request's answer of `status` with
/// `headers`.
pub(super) fn exchange<'a>(
    ctx: &'a Ctx,
    status: StatusCode,
    headers: &'a HeaderMap,
) -> Exchange<'a> {
    Exchange {
        policy: &ctx.policy,
        status,
        headers,
        unkeyed_query: ctx.unkeyed_query,
        authorized: ctx.authorized,
    }
}

/// Why a response from the service cannot be stored, or for how long it can (from when
/// it was produced) and how old it was on arrival.
pub(super) fn decide<B: Body>(
    ctx: &Ctx,
    parts: &Parts,
    hint: &CacheHint,
    body: &B,
) -> Result<(Duration, Duration), &'static str> {
    let policy = &ctx.policy;
    if ctx.head {
        return Err("head");
    }
    if hint.skip {
        return Err("handler");
    }
    if hint.invalid {
        return Err("hint");
    }
    if ctx.tags.len() + hint.tags.len() > policy.max_tags {
        // Dropping some would leave the entry out of invalidations meant for it.
        return Err("too-many-tags");
    }
    if parts.extensions.get::<Collapsed>().is_some() {
        // A copy of another request's response: that request stores it.
        return Err("collapsed");
    }
    // A 206 to a `Range` is stored in HTTP mode, under a key of its own (never the complete
    // response's), when it is one range of a known length and varies on nothing.
    let partial = parts.status == StatusCode::PARTIAL_CONTENT;
    if partial
        && !(policy.http
            && policy.statuses.contains(&206)
            && ctx.range.is_some()
            && ctx.primary.is_none()
            && crate::http::content_range(&parts.headers).is_some()
            // Read from memory only: a store without a memory tier keeps none.
            && ctx.stash().store().get_local(&ctx.key).is_some()
            && crate::http::vary_names(&parts.headers).is_some_and(|v| v.is_empty()))
    {
        return Err("status");
    }
    // Decided by a targeted field (CDN-Cache-Control) where it has one.
    let view = crate::http::effective(&parts.headers, &policy.targeted);
    let exchange = exchange(ctx, parts.status, &view);
    exchange.storable()?;
    let validator = crate::http::has_validator(&parts.headers);
    let declared = headers::content_length(&parts.headers);
    let limit = policy.max_body_size as u64;
    if declared.is_some_and(|n| n > limit) || body.size_hint().lower() > limit {
        return Err("too-large");
    }
    let (mut ttl, mut age) = exchange.lifetime(hint, ctx.stash().now())?;
    if policy.http && ttl <= age {
        if !validator {
            return Err("stale-on-arrival");
        }
        // Kept already expired (dated a millisecond early), to be revalidated with a
        // conditional request before any use.
        age += Duration::from_millis(1);
        ttl = age;
    }
    // Jitter spreads the policy's own TTL, never one the handler or a status TTL set.
    if !policy.ttl_jitter.is_zero()
        && hint.ttl.is_none()
        && policy.status_ttl(parts.status).is_none()
    {
        ttl = ttl.saturating_sub(policy.ttl_jitter.mul_f64(ctx.stash().random()));
    }
    if ttl.is_zero() {
        return Err("ttl");
    }
    Ok((ttl, age))
}

/// The service's response, on its way to the client, with a copy kept to be stored if the rules
/// allow it.
pub(super) fn miss<B: Body<Data = Bytes>>(
    mut ctx: Box<Ctx>,
    resp: Response<B>,
    cx: &mut Context<'_>,
) -> Response<CacheBody<B>> {
    let (mut parts, body) = resp.into_parts();
    // In HTTP mode, an origin's `x-stash-*` headers are its own (unless the policy obeys
    // them): left as they are, and nothing taken from them.
    let mut hint = if ctx.policy.hints {
        CacheHint::take(&mut parts)
    } else {
        CacheHint::default()
    };
    let lease = parts
        .extensions
        .remove::<LeaseSlot>()
        .and_then(|slot| slot.take())
        .or_else(|| ctx.lease.take());
    let stash = ctx.stash().clone();
    let decision = decide(&ctx, &parts, &hint, &body);
    let collapsed = parts.extensions.get::<Collapsed>().copied();
    let status = match decision {
        Err(_) if collapsed == Some(Collapsed::Alone) => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("single-flight-bound"),
            None,
            Some(&ctx.full),
            ctx.shown,
        ),
        Err(_) if collapsed.is_some() => {
            let plain = match collapsed {
                Some(Collapsed::FromEntry) => &stash.inner.status.collapsed_hit,
                _ => &stash.inner.status.collapsed_miss,
            };
            status_value(&stash, plain, None, None, Some(&ctx.full), ctx.shown)
        }
        // `stored` only when the whole body is known to fit; a streaming body is stored when
        // it ends, if it stays within the limit, which these headers cannot yet tell.
        // A gRPC answer is stored only if its trailers, still to come, say it succeeded.
        Ok(_) if ctx.policy.grpc => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("grpc-pending"),
            None,
            Some(&ctx.full),
            ctx.shown,
        ),
        // Invalidated while the service answered (here, or heard on the bus): the fill will
        // be refused.
        Ok(_) if stash.store().refuses(&ctx.key, ctx.started) => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("invalidated"),
            None,
            Some(&ctx.full),
            ctx.shown,
        ),
        Ok(_) if body.size_hint().exact().is_some() => status_value(
            &stash,
            &stash.inner.status.stored,
            None,
            None,
            Some(&ctx.full),
            ctx.shown,
        ),
        Ok(_) => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("streaming"),
            None,
            Some(&ctx.full),
            ctx.shown,
        ),
        Err(reason) => {
            tracing::debug!(route = %ctx.policy.route, key = %ctx.full, reason, "response not stored");
            status_value(
                &stash,
                &stash.inner.status.miss,
                Some(reason),
                None,
                Some(&ctx.full),
                ctx.shown,
            )
        }
    };
    let body = match decision {
        Ok((ttl, age)) => {
            let mut stored = parts.headers.clone();
            headers::strip_hop_by_hop(&mut stored);
            // One client's cookie (stored only where the policy asks for a copy without it).
            stored.remove(http::header::SET_COOKIE);
            let partial = parts.status == StatusCode::PARTIAL_CONTENT;
            let keep = ttl
                .saturating_add(ctx.policy.grace())
                .min(crate::entry::MAX_TTL);
            let variant = if partial {
                None
            } else {
                variant_keys(&ctx, &parts.headers, keep)
            };
            let Ctx {
                mut key,
                mut full,
                mut tags,
                policy,
                started,
                primary,
                ..
            } = *ctx;
            if let Some(variant) = variant {
                // The URL's key holds the record of what its responses vary on (this
                // request's key may already be a variant's); the response goes under its
                // variant's key.
                let url_key = primary.map_or_else(|| key.clone(), |(_, k)| k);
                let put = stash
                    .store()
                    .put(url_key, variant.record, variant.record_keep);
                let drops: Vec<_> = variant
                    .evicted
                    .into_iter()
                    .map(|k| stash.store().delete(k.into()))
                    .collect();
                // Memory stores on the call; a shared store needs its future run.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = put.await;
                        for drop in drops {
                            let _ = drop.await;
                        }
                    });
                }
                full = variant.full;
                key = variant.key;
            }
            if partial {
                // Its own key, which only a `Range` request looks up.
                let pfull = crate::http::partial_key(&full);
                key = stash.stored_key(&pfull);
                full = pfull.into();
            }
            tags.extend(hint.tags.drain(..).map(|t| stash.tag_name(&t).into_owned()));
            let capture = Capture {
                // Dated when the origin produced it: the age it arrived with counts.
                stored_at: started.checked_sub(age).unwrap_or(started),
                started,
                grace: policy.grace(),
                stash,
                key,
                full_key: full,
                status: parts.status,
                headers: stored,
                ttl,
                tags,
                limit: policy.max_body_size,
                declared: headers::content_length(&parts.headers),
                etag: policy.etag,
                grpc: policy.grpc,
                sliding: policy.sliding,
                local: partial,
                lease,
                size: 0,
                chunks: Vec::new(),
                trailers: None,
            };
            CacheBody::tee(body, capture, cx)
        }
        Err(_) => CacheBody::inner(body),
    };
    parts.headers.insert(CACHE_STATUS, status);
    fresh_from_the_service(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// Every answer on a cached route carries `Age`: zero for one fresh from the service (unless
/// the service, itself behind a cache, says otherwise).
pub(super) fn fresh_from_the_service(headers: &mut HeaderMap) {
    headers
        .entry(header::AGE)
        .or_insert(HeaderValue::from_static("0"));
}
