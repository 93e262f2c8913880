//! Content discovery: the catalog and tag lists, with `n`/`last` paging
//! and `Link: <...>; rel="next"`.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use engine::store::MAX_PAGE;
use engine::{ErrorCode, RepoName, Store};
use serde_json::json;

use super::{Req, respond};
use crate::error::{ApiError, ApiResult};

/// `n` and `last` from the query. The page holds at most `MAX_PAGE - 1`
/// items, so asking the engine for one more says whether a next page exists.
fn paging(req: &Req) -> ApiResult<(usize, Option<String>)> {
    let n = match req.query.one("n")? {
        None => MAX_PAGE - 1,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Unsupported,
                    format!(
                        "n={:?} is not a count",
                        s.chars().take(20).collect::<String>()
                    ),
                )
            })?
            .min(MAX_PAGE - 1),
    };
    Ok((n, req.query.one("last")?.map(str::to_owned)))
}

/// Trims a page fetched with one extra item; the `Link` of the next page.
fn page<T: ToString>(mut items: Vec<T>, n: usize, base: &str) -> (Vec<String>, Option<String>) {
    let more = items.len() > n;
    items.truncate(n);
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    let link = match items.last() {
        Some(last) if more => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", last)
                .finish();
            Some(format!("<{base}?{query}>; rel=\"next\""))
        }
        _ => None,
    };
    (items, link)
}

fn json_page(value: serde_json::Value, link: Option<String>) -> Response {
    let body = value.to_string();
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/json".to_owned()),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    if let Some(link) = link {
        headers.push((header::LINK, link));
    }
    respond(StatusCode::OK, headers, Body::from(body))
}

pub(super) async fn tags(store: &Store, repo: &RepoName, req: &Req) -> ApiResult<Response> {
    let (n, last) = paging(req)?;
    let items = if n == 0 {
        // The repository must still exist (404 otherwise).
        store.tags(repo, Some(0), None).await?
    } else {
        store.tags(repo, Some(n + 1), last.as_deref()).await?
    };
    let (tags, link) = page(items, n, &format!("/v2/{repo}/tags/list"));
    Ok(json_page(
        json!({"name": repo.as_str(), "tags": tags}),
        link,
    ))
}

pub(super) async fn catalog(store: &Store, req: &Req) -> ApiResult<Response> {
    let (n, last) = paging(req)?;
    let items = if n == 0 {
        Vec::new()
    } else {
        store.catalog(Some(n + 1), last.as_deref()).await?
    };
    let (repos, link) = page(items, n, "/v2/_catalog");
    Ok(json_page(json!({"repositories": repos}), link))
}
