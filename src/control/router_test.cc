#include "control/router.h"

#include <gtest/gtest.h>

#include <optional>

namespace clonevm::control {
namespace {

// Dispatches `method path` and returns the response the router or handler gave.
Response Dispatch(const Router& router, std::string method, std::string target, std::string body = {},
                  HeaderList headers = {}) {
  Request request;
  request.method = std::move(method);
  request.target = target;
  request.path = target.substr(0, target.find('?'));
  request.body = std::move(body);
  request.headers = std::move(headers);
  std::optional<Response> out;
  router.Dispatch(std::move(request), Responder([&](Completion c) { out = std::move(c.response); }));
  EXPECT_TRUE(out.has_value());
  return out ? std::move(*out) : Response{};
}

nlohmann::json Body(const Response& r) { return nlohmann::json::parse(r.body); }

Router TestRouter() {
  Router router;
  router.Add("GET", "/vm", [](Request, Responder r) { r.RespondJson(200, {{"state", "running"}}); });
  router.Add("PUT", "/vm/pause", [](Request, Responder r) { r.Respond(Response{.status = 204}); });
  router.Add("PUT", "/vm/resume", [](Request, Responder r) { r.Respond(Response{.status = 204}); });
  router.Add("GET", "/vm/devices/{id}", [](Request req, Responder r) {
    r.RespondJson(200, {{"id", req.path_params.at("id")}});
  });
  router.Add("GET", "/vm/devices/special", [](Request, Responder r) { r.RespondJson(200, {{"special", true}}); });
  router.Add("DELETE", "/vm/devices/{id}", [](Request, Responder r) { r.Respond(Response{.status = 204}); });
  router.Add("PUT", "/vm/shutdown", [](Request req, Responder r) {
    auto body = ParseJsonBody(req, {"mode"});
    if (!body) return r.Respond(body.error().ToResponse());
    r.RespondJson(200, {{"mode", body->value("mode", "acpi")}});
  });
  router.Add("GET", "/forgotten", [](Request, Responder) {});
  return router;
}

TEST(RouterTest, DispatchesExactPaths) {
  Router router = TestRouter();
  Response r = Dispatch(router, "GET", "/vm?x=1");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(Body(r)["state"], "running");
  EXPECT_EQ(Dispatch(router, "PUT", "/vm/pause").status, 204);
  EXPECT_EQ(Dispatch(router, "HEAD", "/vm").status, 200);
}

TEST(RouterTest, UnknownPathsAre404WithAJsonError) {
  Router router = TestRouter();
  for (std::string path : {"/", "/vm/", "/vmx", "/vm/pause/now", "/VM", "/vm//pause"}) {
    Response r = Dispatch(router, "GET", path);
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_EQ(Body(r)["error"], "no such resource: " + path);
    EXPECT_EQ(FindHeader(r.headers, "Content-Type"), "application/json");
  }
}

TEST(RouterTest, WrongMethodsAre405WithAllow) {
  Router router = TestRouter();
  Response r = Dispatch(router, "POST", "/vm");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(FindHeader(r.headers, "Allow"), "GET, HEAD");
  EXPECT_EQ(Body(r)["error"], "method POST not allowed on /vm");
  r = Dispatch(router, "GET", "/vm/pause");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(FindHeader(r.headers, "Allow"), "PUT");
  r = Dispatch(router, "PUT", "/vm/devices/blk0");
  EXPECT_EQ(FindHeader(r.headers, "Allow"), "GET, HEAD, DELETE");
}

TEST(RouterTest, ParamsAreDecodedAndExactSegmentsWin) {
  Router router = TestRouter();
  EXPECT_EQ(Body(Dispatch(router, "GET", "/vm/devices/blk%200"))["id"], "blk 0");
  EXPECT_EQ(Body(Dispatch(router, "GET", "/vm/devices/special"))["special"], true);
  EXPECT_EQ(Dispatch(router, "DELETE", "/vm/devices/special").status, 405);
  EXPECT_EQ(Dispatch(router, "GET", "/vm/devices/a%2Fb").status, 400);
  EXPECT_EQ(Dispatch(router, "GET", "/vm/devices/a%00").status, 400);
  EXPECT_EQ(Dispatch(router, "GET", "/vm/devices/a%4").status, 400);
  EXPECT_EQ(Dispatch(router, "GET", "/vm/devices/a%zz").status, 400);
  EXPECT_EQ(Dispatch(router, "GET", "/vm/devices/").status, 404);
}

TEST(RouterTest, ForgottenRespondersAnswer500) {
  Router router = TestRouter();
  Response r = Dispatch(router, "GET", "/forgotten");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(Body(r)["error"], "request was not answered");
}

TEST(ParseJsonBodyTest, ChecksTypeSyntaxShapeAndFields) {
  Router router = TestRouter();
  const HeaderList json = {{"Content-Type", "application/json; charset=utf-8"}};
  EXPECT_EQ(Body(Dispatch(router, "PUT", "/vm/shutdown", R"({"mode":"force"})", json))["mode"], "force");
  EXPECT_EQ(Body(Dispatch(router, "PUT", "/vm/shutdown", "", json))["mode"], "acpi");
  EXPECT_EQ(Body(Dispatch(router, "PUT", "/vm/shutdown", R"({"mode":"agent"})"))["mode"], "agent");

  Response r = Dispatch(router, "PUT", "/vm/shutdown", R"({"mode":"force","now":true})", json);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Body(r)["error"], "unknown field now");
  r = Dispatch(router, "PUT", "/vm/shutdown", R"({"mode":)", json);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Body(r)["error"], "body is not valid JSON");
  r = Dispatch(router, "PUT", "/vm/shutdown", R"(["mode"])", json);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(Body(r)["error"], "body must be a JSON object");
  r = Dispatch(router, "PUT", "/vm/shutdown", R"({"mode":"force"})",
               {{"Content-Type", "application/x-www-form-urlencoded"}});
  EXPECT_EQ(r.status, 415);
  EXPECT_NE(Body(r)["error"].get<std::string>().find("curl --json"), std::string::npos);
  // Invalid UTF-8 in a field name is reported, not thrown.
  r = Dispatch(router, "PUT", "/vm/shutdown", "{\"\xff\":1}", json);
  EXPECT_EQ(r.status, 400);
}

TEST(ResponderTest, MovedFromRespondersDoNotAnswer) {
  int calls = 0;
  {
    Responder a([&](Completion c) {
      ++calls;
      EXPECT_EQ(c.response.status, 204);
    });
    Responder b = std::move(a);
    EXPECT_FALSE(a.pending());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_TRUE(b.pending());
    b.Respond(Response{.status = 204});
    EXPECT_FALSE(b.pending());
  }
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace clonevm::control
