// Server tests: a real EventLoop on a thread, talked to with the blocking client, with raw sockets
// (for what well-behaved clients never send) and with curl --unix-socket.
#include "control/server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include "base/testing/host_tools.h"
#include "control/client.h"

namespace clonevm::control {
namespace {

using namespace std::chrono_literals;
using host_tools::RunCommand;
using host_tools::TempDir;

constexpr auto kTimeout = 5000ms;

// A connected raw client socket (blocking), for requests the real client would never send.
Fd RawConnect(const std::string& path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  timeval tv{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

void SendRaw(const Fd& fd, std::string_view bytes) { ASSERT_TRUE(WriteAll(fd.get(), bytes.data(), bytes.size())); }

// Reads until the server closes the connection (or 5 s pass).
std::string ReadUntilClose(const Fd& fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Reads until `out` holds `count` complete responses (Content-Length framed).
std::vector<Response> ReadResponses(const Fd& fd, size_t count) {
  std::vector<Response> responses;
  std::string in;
  char buf[4096];
  while (responses.size() < count) {
    ResponseParser parser;
    auto step = parser.Parse(in, false);
    if (step.status == ResponseParser::Status::kResponse) {
      in.erase(0, step.consumed);
      responses.push_back(std::move(step.response));
      continue;
    }
    if (step.status == ResponseParser::Status::kError) break;
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  return responses;
}

std::string ErrorOf(const Response& r) {
  auto body = nlohmann::json::parse(r.body, nullptr, false);
  return body.is_object() && body.contains("error") ? body["error"].get<std::string>() : "<" + r.body + ">";
}

class ServerTest : public ::testing::Test {
 protected:
  void Start(Limits limits = {}) {
    ASSERT_TRUE(dir_.ok());
    socket_ = dir_.File("vm.sock");
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop);
    loop_ = std::move(*loop);
    auto server = Server::Create(*loop_, socket_, MakeRouter(), limits);
    ASSERT_TRUE(server) << server.error().message();
    server_ = std::move(*server);
    thread_ = std::thread([this] { ASSERT_TRUE(loop_->Run()); });
  }

  void TearDown() override {
    if (thread_.joinable()) {
      loop_->Post([this] {
        server_.reset();
        loop_->Stop();
      });
      thread_.join();
    }
    for (auto& t : workers_) t.join();
    parked_.clear();  // completing these after the server is gone must be harmless
  }

  // Runs fn on the loop thread and waits for its result.
  template <typename Fn>
  auto OnLoop(Fn fn) {
    std::promise<decltype(fn())> done;
    loop_->Post([&] { done.set_value(fn()); });
    return done.get_future().get();
  }

  Router MakeRouter() {
    Router router;
    router.Add("GET", "/vm", [this](Request, Responder r) {
      r.RespondJson(200, {{"state", paused_ ? "paused" : "running"}});
    });
    router.Add("PUT", "/vm/pause", [this](Request, Responder r) {
      paused_ = true;
      r.Respond(Response{.status = 204});
    });
    router.Add("PUT", "/vm/resume", [this](Request, Responder r) {
      paused_ = false;
      r.Respond(Response{.status = 204});
    });
    router.Add("PUT", "/vm/shutdown", [](Request req, Responder r) {
      auto body = ParseJsonBody(req, {"mode"});
      if (!body) return r.Respond(body.error().ToResponse());
      r.RespondJson(200, {{"mode", body->value("mode", "acpi")}});
    });
    router.Add("POST", "/echo", [](Request req, Responder r) { r.RespondJson(200, {{"size", req.body.size()}}); });
    // Answers from another thread after a delay, like a request posted to the VM loop.
    router.Add("GET", "/slow", [this](Request, Responder r) {
      std::lock_guard lock(mu_);
      workers_.emplace_back([r = std::move(r)]() mutable {
        std::this_thread::sleep_for(50ms);
        r.RespondJson(200, {{"thread", "worker"}});
      });
    });
    // Never answers while the server lives.
    router.Add("GET", "/never", [this](Request, Responder r) { parked_.push_back(std::move(r)); });
    router.Add("GET", "/forget", [](Request, Responder) {});
    // Hands the client the read end of a pipe that already holds a message.
    router.Add("POST", "/vm/exec/session", [](Request, Responder r) {
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) return r.RespondError(500, "pipe");
      Fd read_end(p[0]);
      Fd write_end(p[1]);
      const std::string message = "hello through SCM_RIGHTS";
      if (!WriteAll(write_end.get(), message.data(), message.size())) return r.RespondError(500, "write");
      Response response = Response::Json(200, {{"fds", 1}});
      response.fds.push_back(std::move(read_end));
      r.Respond(std::move(response));
    });
    router.Add("GET", "/attach", [this](Request, Responder r) {
      Response head{.status = 101, .headers = {{"Upgrade", "clone-stream"}}};
      r.Hijack(std::move(head), [this](Result<HijackedConnection> taken) {
        ASSERT_TRUE(taken);
        hijacked_buffered_ = taken->buffered;
        const std::string hello = "stream-start:" + taken->buffered;
        ASSERT_TRUE(WriteAll(taken->socket.get(), hello.data(), hello.size()));
        hijacked_ = std::move(taken->socket);
      });
    });
    return router;
  }

  TempDir dir_{"clone-control"};
  std::string socket_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::atomic<bool> paused_{false};
  std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<Responder> parked_;  // loop thread only
  Fd hijacked_;                    // loop thread only
  std::string hijacked_buffered_;  // loop thread only
};

TEST_F(ServerTest, ClientGetsJsonAndTheSocketIsPrivate) {
  Start();
  struct stat st {};
  ASSERT_EQ(::stat(socket_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto r = Call(socket_, "GET", "/vm", std::nullopt, kTimeout);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->status, 200);
  auto json = ResponseJson(*r);
  ASSERT_TRUE(json);
  EXPECT_EQ((*json)["state"], "running");
  auto missing = Call(socket_, "GET", "/nope", std::nullopt, kTimeout);
  ASSERT_TRUE(missing);
  auto error = ResponseJson(*missing);
  ASSERT_FALSE(error);
  EXPECT_EQ(error.error().message(), "HTTP 404: no such resource: /nope");
}

TEST_F(ServerTest, CurlDrivesPauseResumeAndShutdown) {
  Start();
  const std::string curl = "curl -sS --max-time 5 --unix-socket " + socket_ + " ";
  auto pause = RunCommand(curl + "-X PUT -o /dev/null -w '%{http_code}' http://localhost/vm/pause");
  EXPECT_EQ(pause.exit_code, 0) << pause.output;
  EXPECT_EQ(pause.output, "204");
  EXPECT_TRUE(paused_);
  auto state = RunCommand(curl + "http://localhost/vm");
  EXPECT_EQ(state.output, "{\"state\":\"paused\"}\n");
  auto resume = RunCommand(curl + "-X PUT -o /dev/null -w '%{http_code}' http://localhost/vm/resume");
  EXPECT_EQ(resume.output, "204");
  EXPECT_FALSE(paused_);
  auto shutdown = RunCommand(curl + "-X PUT --json '{\"mode\":\"force\"}' http://localhost/vm/shutdown");
  EXPECT_EQ(shutdown.output, "{\"mode\":\"force\"}\n");
  auto form = RunCommand(curl + "-X PUT -d '{\"mode\":\"force\"}' -w ' %{http_code}' http://localhost/vm/shutdown");
  EXPECT_NE(form.output.find("415"), std::string::npos) << form.output;
  auto unknown = RunCommand(curl + "-X PUT --json '{\"mod\":1}' -w ' %{http_code}' http://localhost/vm/shutdown");
  EXPECT_EQ(unknown.output, "{\"error\":\"unknown field mod\"}\n 400");
  auto wrong = RunCommand(curl + "-i -X DELETE http://localhost/vm");
  EXPECT_NE(wrong.output.find("HTTP/1.1 405 Method Not Allowed"), std::string::npos) << wrong.output;
  EXPECT_NE(wrong.output.find("Allow: GET, HEAD"), std::string::npos) << wrong.output;
  // curl keeps the connection alive across URLs: one connect for three requests.
  auto reuse = RunCommand(curl + "-o /dev/null -o /dev/null -o /dev/null -w '%{num_connects}' " +
                          "http://localhost/vm http://localhost/vm http://localhost/vm");
  EXPECT_EQ(reuse.output, "100") << reuse.output;
  auto head = RunCommand(curl + "-I http://localhost/vm");
  EXPECT_NE(head.output.find("Content-Length: 20"), std::string::npos) << head.output;
}

TEST_F(ServerTest, CurlLargeBodiesAreRefusedWith413AndServingContinues) {
  Start();
  const std::string big = dir_.File("big.json");
  {
    std::ofstream out(big);
    out << std::string(2 * 1024 * 1024, ' ');
  }
  const std::string curl = "curl -sS --max-time 5 --unix-socket " + socket_ + " ";
  auto r = RunCommand(curl + "-H 'Content-Type: application/json' --data-binary @" + big +
                      " -w ' %{http_code}' http://localhost/echo");
  EXPECT_NE(r.output.find("413"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("request body larger than 1048576 bytes"), std::string::npos) << r.output;
  auto ok = RunCommand(curl + "--json '{}' http://localhost/echo");
  EXPECT_EQ(ok.output, "{\"size\":2}\n");
}

TEST_F(ServerTest, ClientLargeBodyGets413AndTheServerKeepsServing) {
  Start();
  nlohmann::json body = {{"stdin", std::string(1024 * 1024 + 1, 'x')}};
  auto r = Call(socket_, "POST", "/echo", body, kTimeout);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->status, 413);
  auto ok = Call(socket_, "POST", "/echo", nlohmann::json{{"a", std::string(1000 * 1000, 'y')}}, kTimeout);
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(ok->status, 200);
}

TEST_F(ServerTest, MalformedRequestsGet4xxJsonAndTheConnectionCloses) {
  Start();
  struct Case {
    std::string bytes;
    int status;
  };
  const std::vector<Case> cases = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /vm HTTP/1.1\r\n\r\n", 400},  // no Host
      {"GET /vm HTTP/3.0\r\nHost: x\r\n\r\n", 505},
      {"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411},
      {"GET /vm HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", 400},
      {"GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
      {"GET /vm HTTP/1.1\r\nHost: x\r\nX: " + std::string(17000, 'a') + "\r\n\r\n", 431},
      {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413},
      {"PUT /vm/shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{bad}", 400},
      {"PUT /vm/shutdown HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", 415},
      {"PATCH /vm HTTP/1.1\r\nHost: x\r\n\r\n", 405},
      {"GET /vm/missing HTTP/1.1\r\nHost: x\r\n\r\n", 404},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.bytes.substr(0, 60));
    Fd fd = RawConnect(socket_);
    SendRaw(fd, c.bytes);
    // Handler and routing errors are ordinary responses on a kept-alive connection, so end it;
    // parser errors must close the connection by themselves.
    const bool parser_error = c.bytes.find("/vm/shutdown") == std::string::npos && c.status != 404 && c.status != 405;
    if (!parser_error) ::shutdown(fd.get(), SHUT_WR);
    const auto start = std::chrono::steady_clock::now();
    std::string reply = ReadUntilClose(fd);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    ResponseParser parser;
    auto step = parser.Parse(reply, true);
    ASSERT_EQ(step.status, ResponseParser::Status::kResponse) << reply;
    EXPECT_EQ(step.response.status, c.status) << reply;
    EXPECT_EQ(FindHeader(step.response.headers, "Content-Type"), "application/json");
    EXPECT_FALSE(ErrorOf(step.response).empty());
  }
  EXPECT_EQ(Call(socket_, "GET", "/vm", std::nullopt, kTimeout)->status, 200);
}

TEST_F(ServerTest, PipelinedRequestsAreAnsweredInOrder) {
  Start();
  Fd fd = RawConnect(socket_);
  SendRaw(fd,
          "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
          "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
          "GET /vm HTTP/1.1\r\nHost: x\r\n\r\n"
          "GET /vm HTTP/1.0\r\n\r\n");
  auto responses = ReadResponses(fd, 4);
  ASSERT_EQ(responses.size(), 4u);
  EXPECT_EQ(responses[0].body, "{\"thread\":\"worker\"}\n");
  EXPECT_EQ(responses[1].status, 204);
  EXPECT_EQ(responses[2].body, "{\"state\":\"paused\"}\n");
  EXPECT_EQ(FindHeader(responses[3].headers, "Connection"), "close");
  EXPECT_EQ(ReadUntilClose(fd), "");  // HTTP/1.0 without keep-alive: closed after the response
}

TEST_F(ServerTest, ExpectContinueGetsAnInterimResponse) {
  Start();
  Fd fd = RawConnect(socket_);
  SendRaw(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  char buf[64] = {};
  ssize_t n = ::read(fd.get(), buf, sizeof(buf));
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "HTTP/1.1 100 Continue\r\n\r\n");
  SendRaw(fd, "abcd");
  auto responses = ReadResponses(fd, 1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].body, "{\"size\":4}\n");
}

TEST_F(ServerTest, HalfClosedClientsStillGetTheirResponse) {
  Start();
  Fd fd = RawConnect(socket_);
  SendRaw(fd, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
  ::shutdown(fd.get(), SHUT_WR);
  std::string reply = ReadUntilClose(fd);  // returns once the server closes after the response
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply;
  EXPECT_NE(reply.find("{\"thread\":\"worker\"}"), std::string::npos) << reply;
}

TEST_F(ServerTest, FileDescriptorsReachTheClient) {
  Start();
  std::vector<Fd> fds;
  auto r = Call(socket_, "POST", "/vm/exec/session", nlohmann::json::object(), kTimeout, &fds);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->status, 200);
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_TRUE(::fcntl(fds[0].get(), F_GETFD) & FD_CLOEXEC);
  char buf[64] = {};
  ssize_t n = ::read(fds[0].get(), buf, sizeof(buf));
  EXPECT_EQ(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0), "hello through SCM_RIGHTS");
  // Without received_fds the descriptors are closed, not leaked into the response.
  auto again = Call(socket_, "POST", "/vm/exec/session", nlohmann::json::object(), kTimeout);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->fds.empty());
}

TEST_F(ServerTest, AsyncCompletionFromAnotherThread) {
  Start();
  auto r = Call(socket_, "GET", "/slow", std::nullopt, kTimeout);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->body, "{\"thread\":\"worker\"}\n");
}

TEST_F(ServerTest, ForgottenRespondersAnswer500) {
  Start();
  auto r = Call(socket_, "GET", "/forget", std::nullopt, kTimeout);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(ErrorOf(*r), "request was not answered");
}

TEST_F(ServerTest, AHandlerThatNeverRespondsBlocksNobodyElse) {
  Start();
  auto stuck = std::async(std::launch::async, [&] { return Call(socket_, "GET", "/never", std::nullopt, 500ms); });
  for (int i = 0; i < 20; ++i) {
    auto r = Call(socket_, "GET", "/vm", std::nullopt, kTimeout);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->status, 200);
  }
  auto result = stuck.get();
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message().find("timed out"), std::string::npos) << result.error().message();
  // The server dropped the dead connection; answering its parked request later is harmless.
  OnLoop([this] {
    for (auto& r : parked_) r.RespondJson(200, {{"late", true}});
    parked_.clear();
    return 0;
  });
  EXPECT_EQ(Call(socket_, "GET", "/vm", std::nullopt, kTimeout)->status, 200);
}

TEST_F(ServerTest, ManyConcurrentClients) {
  Start();
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 16; ++t) {
    clients.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto r = Call(socket_, i % 5 == 0 ? "GET" : "GET", i % 5 == 0 ? "/slow" : "/vm", std::nullopt, kTimeout);
        if (r && r->status == 200) ++ok;
      }
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(ok, 16 * 25);
  EXPECT_EQ(OnLoop([this] { return server_->connection_count(); }), 0u);
}

TEST_F(ServerTest, ConnectionsBeyondTheLimitGet503) {
  Limits limits;
  limits.max_connections = 3;
  Start(limits);
  std::vector<Fd> held;
  for (int i = 0; i < 3; ++i) held.push_back(RawConnect(socket_));
  // Make sure the server accepted all three before the fourth arrives.
  while (OnLoop([this] { return server_->connection_count(); }) < 3) std::this_thread::sleep_for(1ms);
  auto r = Call(socket_, "GET", "/vm", std::nullopt, kTimeout);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->status, 503);
  held.pop_back();
  while (OnLoop([this] { return server_->connection_count(); }) > 2) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(Call(socket_, "GET", "/vm", std::nullopt, kTimeout)->status, 200);
}

TEST_F(ServerTest, IdleConnectionsAreClosed) {
  Limits limits;
  limits.idle_timeout = 200ms;
  Start(limits);
  Fd fd = RawConnect(socket_);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(ReadUntilClose(fd), "");
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, 150ms);
  EXPECT_LT(waited, 3s);
  // Keep-alive connections time out the same way after their last response.
  Fd kept = RawConnect(socket_);
  SendRaw(kept, "GET /vm HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string reply = ReadUntilClose(kept);
  EXPECT_NE(reply.find("200 OK"), std::string::npos);
}

TEST_F(ServerTest, SlowlorisGets408) {
  Limits limits;
  limits.request_timeout = 300ms;
  limits.idle_timeout = 10s;
  Start(limits);
  Fd fd = RawConnect(socket_);
  std::atomic<bool> stop{false};
  std::thread dribble([&] {
    const std::string bytes = "GET /vm HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(200, 'a');
    for (size_t i = 0; i < bytes.size() && !stop; ++i) {
      if (::send(fd.get(), &bytes[i], 1, MSG_NOSIGNAL) != 1) break;
      std::this_thread::sleep_for(20ms);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  std::string reply = ReadUntilClose(fd);
  stop = true;
  dribble.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  EXPECT_NE(reply.find("408 Request Timeout"), std::string::npos) << reply;
  EXPECT_NE(reply.find("request not received in time"), std::string::npos) << reply;
  EXPECT_EQ(Call(socket_, "GET", "/vm", std::nullopt, kTimeout)->status, 200);
}

TEST_F(ServerTest, HijackHandsOverTheConnection) {
  Start();
  Fd fd = RawConnect(socket_);
  SendRaw(fd, "GET /attach HTTP/1.1\r\nHost: x\r\n\r\nearly-bytes");
  std::string got;
  char buf[256];
  while (got.find("stream-start:early-bytes") == std::string::npos) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    ASSERT_GT(n, 0) << got;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(got.rfind("HTTP/1.1 101 Switching Protocols\r\nUpgrade: clone-stream\r\n", 0), 0u) << got;
  EXPECT_EQ(got.find("Connection: close"), std::string::npos);
  EXPECT_EQ(OnLoop([this] { return server_->connection_count(); }), 0u);
  // The socket is the handler's now: bytes flow both ways without HTTP.
  int hijacked = OnLoop([this] { return hijacked_.get(); });
  SendRaw(fd, "raw");
  pollfd p{hijacked, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  char in[8] = {};
  EXPECT_EQ(::read(hijacked, in, sizeof(in)), 3);
  EXPECT_EQ(std::string(in), "raw");
}

TEST(ServerSocketTest, RefusesALiveSocketReplacesAStaleOneAndUnlinksItsOwn) {
  TempDir dir("clone-control");
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop);
  const std::string path = dir.File("vm.sock");
  {
    auto first = Server::Create(**loop, path, Router());
    ASSERT_TRUE(first) << first.error().message();
    auto second = Server::Create(**loop, path, Router());
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().message(), "another VM is serving " + path);
  }
  EXPECT_NE(::access(path.c_str(), F_OK), 0);  // the destructor unlinked it
  {
    // A stale socket: bound, never listening, its owner gone.
    Fd stale(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  auto server = Server::Create(**loop, path, Router());
  ASSERT_TRUE(server) << server.error().message();
  server->reset();
  const std::string file = dir.File("not-a-socket");
  std::ofstream(file) << "precious";
  auto refused = Server::Create(**loop, file, Router());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message(), file + " exists and is not a socket");
  EXPECT_TRUE(ReadFile(file).has_value());
  auto too_long = Server::Create(**loop, "/tmp/" + std::string(200, 'x'), Router());
  ASSERT_FALSE(too_long);
}

TEST(ClientTest, RefusesTargetsThatWouldSplitTheRequest) {
  EXPECT_FALSE(Call("/tmp/x.sock", "GET", "/vm HTTP/1.1\r\nX: y", std::nullopt, kTimeout));
  EXPECT_FALSE(Call("/tmp/x.sock", "GET", "vm", std::nullopt, kTimeout));
  EXPECT_FALSE(Call("/tmp/x.sock", "G T", "/vm", std::nullopt, kTimeout));
}

TEST(ClientTest, ReportsAMissingServer) {
  auto r = Call("/nonexistent/clone.sock", "GET", "/vm", std::nullopt, kTimeout);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message().rfind("no VM is serving /nonexistent/clone.sock", 0), 0u) << r.error().message();
}

// The status a client running as `uid` gets for GET /vm (0 when it could not connect at all),
// from a forked child that drops to that uid first.
int StatusAsUid(const std::string& socket, uid_t uid) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -1;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    int status = 0;
    if (::setresgid(uid, uid, uid) == 0 && ::setresuid(uid, uid, uid) == 0) {
      Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, socket.c_str(), sizeof(addr.sun_path) - 1);
      if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        constexpr char kRequest[] = "GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // The server may refuse and close before the request is sent: no SIGPIPE.
        [[maybe_unused]] auto sent = ::send(fd.get(), kRequest, sizeof(kRequest) - 1, MSG_NOSIGNAL);
        char buf[512] = {};
        ssize_t n = ::read(fd.get(), buf, sizeof(buf) - 1);
        if (n > 12) status = std::atoi(buf + 9);  // "HTTP/1.1 403 ..."
        if (status == 403 && std::strstr(buf, "is not the owner of this VM") == nullptr) status = -2;
      }
    }
    [[maybe_unused]] auto w = ::write(p[1], &status, sizeof(status));
    ::_exit(0);
  }
  ::close(p[1]);
  int status = -1;
  if (::read(p[0], &status, sizeof(status)) != sizeof(status)) status = -1;
  ::close(p[0]);
  ::waitpid(pid, nullptr, 0);
  return status;
}

// SO_PEERCRED: besides root, only the owner's uid is served, even on a socket anyone may open.
TEST_F(ServerTest, OnlyTheOwnerOrRootIsServed) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as other uids";
  constexpr uid_t kNobody = 65534;
  Limits limits;
  limits.owner_uid = 12345;  // the VM's owner: neither root nor nobody
  Start(limits);
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(socket_.c_str(), 0666), 0);  // the file mode no longer keeps anyone out
  EXPECT_EQ(StatusAsUid(socket_, kNobody), 403);
  EXPECT_EQ(StatusAsUid(socket_, 12345), 200);
  EXPECT_EQ(StatusAsUid(socket_, 0), 200);
  // curl sends its request after the connection is accepted: it still reads the 403 and why.
  auto curl =
      RunCommand("setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -w ' %{http_code}' --unix-socket " +
                 socket_ + " http://localhost/vm");
  EXPECT_NE(curl.output.find("is not the owner of this VM (uid 12345) or root"), std::string::npos) << curl.output;
  EXPECT_TRUE(curl.output.ends_with(" 403")) << curl.output;
  EXPECT_EQ(OnLoop([this] { return server_->connection_count(); }), 0u);  // the refused one is not kept
}

}  // namespace
}  // namespace clonevm::control
