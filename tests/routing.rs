//! Routing (SPEC §2 `[[routes]]`): longest segment-aware prefix, exact host
//! beats no host, `methods`, `strip_prefix`, and 404 `no_route`.

mod support;

use http::Request;
use support::*;

/// One upstream per route, so the answering instance names the route.
struct Fleet {
    gw: TestGateway,
    ups: Vec<Upstream>,
}

async fn fleet() -> Fleet {
    let names = ["api", "users", "nohost", "host", "getonly", "mixed_any", "mixed_post", "strip"];
    let mut ups = Vec::new();
    let mut body = String::new();
    for n in names {
        let up = Upstream::start(n).await;
        body += &service_toml(n, &[up.endpoint()], "");
        ups.push(up);
    }
    body += &route_toml("/api", "api", "");
    body += &route_toml("/api/users", "users", "");
    body += &route_toml("/hosted", "nohost", "");
    body += &route_toml("/hosted", "host", "host = \"api.example.com\"");
    body += &route_toml("/getonly", "getonly", "methods = [\"GET\"]");
    body += &route_toml("/mixed", "mixed_any", "");
    body += &route_toml("/mixed", "mixed_post", "methods = [\"POST\"]");
    body += &route_toml("/strip/me", "strip", "strip_prefix = true");
    Fleet { gw: TestGateway::start(&body).await, ups }
}

fn get_with_host(path: &str, host: &str) -> Request<TestBody> {
    Request::get(path).header("host", host).body(empty()).unwrap()
}

#[tokio::test]
async fn longest_prefix_wins() {
    let f = fleet().await;
    for (path, instance, seen) in [
        ("/api/users/42", "users", "/api/users/42"),
        ("/api/users", "users", "/api/users"),
        ("/api/users/", "users", "/api/users/"),
        ("/api/orders/1", "api", "/api/orders/1"),
        ("/api", "api", "/api"),
    ] {
        let r = f.gw.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.instance(), Some(instance), "{path}");
        assert_eq!(r.json()["instance"], instance, "{path}");
        assert_eq!(r.json()["path"], seen, "{path}: without strip_prefix the path is unchanged");
    }
}

#[tokio::test]
async fn prefixes_match_whole_segments_only() {
    let f = fleet().await;
    let r = f.gw.get("/api/usersX/1").await;
    assert_eq!(r.instance(), Some("api"), "/api/usersX must not match /api/users");
    let r = f.gw.get("/api/users2").await;
    assert_eq!(r.instance(), Some("api"));
    // No route at all: /apix is not under /api.
    let r = f.gw.get("/apix").await;
    assert_gateway_error(&r, 404, "no_route");
    let r = f.gw.get("/strip/meX").await;
    assert_gateway_error(&r, 404, "no_route");
}

#[tokio::test]
async fn exact_host_beats_no_host() {
    let f = fleet().await;
    let r = f.gw.request(get_with_host("/hosted/x", "api.example.com")).await;
    assert_eq!(r.instance(), Some("host"));
    // Case and port do not matter.
    let r = f.gw.request(get_with_host("/hosted/x", "API.Example.com:8080")).await;
    assert_eq!(r.instance(), Some("host"));
    // Another host (and the default Host of the client) takes the host-less route.
    let r = f.gw.request(get_with_host("/hosted/x", "other.example.com")).await;
    assert_eq!(r.instance(), Some("nohost"));
    let r = f.gw.get("/hosted").await;
    assert_eq!(r.instance(), Some("nohost"));
    // A host with routes still reaches the host-less routes for other paths.
    let r = f.gw.request(get_with_host("/api/users/1", "api.example.com")).await;
    assert_eq!(r.instance(), Some("users"));
}

#[tokio::test]
async fn methods_filter_routes() {
    let f = fleet().await;
    let r = f.gw.get("/getonly/a").await;
    assert_eq!(r.instance(), Some("getonly"));
    let r = f.gw.request(Request::head("/getonly/a").body(empty()).unwrap()).await;
    assert_gateway_error_head(&r, 404);
    let r = f.gw.request(Request::post("/getonly/a").body(full("x")).unwrap()).await;
    let v = assert_gateway_error(&r, 404, "no_route");
    assert!(v["message"].as_str().unwrap().contains("POST"), "{v}");

    // At one prefix, a route listing the method beats one without `methods`.
    let r = f.gw.request(Request::post("/mixed").body(full("x")).unwrap()).await;
    assert_eq!(r.instance(), Some("mixed_post"));
    assert_eq!(r.json()["method"], "POST");
    let r = f.gw.request(Request::put("/mixed/1").body(full("x")).unwrap()).await;
    assert_eq!(r.instance(), Some("mixed_any"));
    let r = f.gw.get("/mixed").await;
    assert_eq!(r.instance(), Some("mixed_any"));
}

/// HEAD answers carry no body, so only the status and request id are checked.
fn assert_gateway_error_head(r: &Resp, status: u16) {
    assert_eq!(r.status.as_u16(), status);
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn strip_prefix_keeps_the_rest_and_the_query() {
    let f = fleet().await;
    for (path, uri) in [
        ("/strip/me/a/b", "/a/b"),
        ("/strip/me/a/b?x=1&y=two", "/a/b?x=1&y=two"),
        ("/strip/me", "/"),
        ("/strip/me/", "/"),
        ("/strip/me?q=1", "/?q=1"),
        ("/strip/me/users/7?", "/users/7"),
    ] {
        let r = f.gw.get(path).await;
        assert_eq!(r.instance(), Some("strip"), "{path}");
        let seen = f.ups[7].last();
        let uri_no_empty_query = seen.uri.trim_end_matches('?');
        assert_eq!(uri_no_empty_query, uri, "{path} reached the upstream as {}", seen.uri);
        assert_eq!(r.json()["uri"].as_str().map(|u| u.trim_end_matches('?')), Some(uri), "{path}");
    }
}

#[tokio::test]
async fn no_route_is_a_json_404_with_the_request_id() {
    let f = fleet().await;
    let r = f.gw.get("/nothing/here?x=1").await;
    let v = assert_gateway_error(&r, 404, "no_route");
    assert!(v["message"].as_str().unwrap().contains("/nothing/here"), "{v}");

    // A client-sent request id is echoed, in the header and in the body.
    let r = f.gw.request(Request::get("/nothing").header("x-request-id", "rid-404-test").body(empty()).unwrap()).await;
    let v = assert_gateway_error(&r, 404, "no_route");
    assert_eq!(v["request_id"], "rid-404-test");

    // No upstream saw any of it.
    assert!(f.ups.iter().all(|u| u.count() == 0));
}
