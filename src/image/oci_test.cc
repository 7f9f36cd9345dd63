#include "image/oci.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "base/bytes.h"
#include "base/sha256.h"
#include "base/testing/host_tools.h"
#include "image/rootfs_create.h"

namespace clonevm {
namespace {

namespace fs = std::filesystem;
using host_tools::RunCommand;
using host_tools::TempDir;

void WriteText(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Blob {
  std::string digest;
  uint64_t size = 0;
};

// Moves `file` into LAYOUT/blobs/sha256/ under its digest.
Blob AddBlob(const std::string& layout, const std::string& file) {
  std::string data = ReadText(file);
  std::string hex = Sha256Hex(AsBytes(data));
  fs::create_directories(layout + "/blobs/sha256");
  fs::rename(file, layout + "/blobs/sha256/" + hex);
  return {"sha256:" + hex, data.size()};
}

Blob AddJsonBlob(const std::string& layout, const std::string& json) {
  WriteText(layout + "/tmp.json", json);
  return AddBlob(layout, layout + "/tmp.json");
}

std::string Desc(const std::string& media, const Blob& b, const std::string& extra = "") {
  return "{\"mediaType\":\"" + media + "\",\"digest\":\"" + b.digest + "\",\"size\":" + std::to_string(b.size) + extra +
         "}";
}

// Two layers. Layer 1 (tar+gzip): etc/motd, etc/gone, opq/{a,sub/b}, keep/k, bin/hello and a
// symlink `link` to `outside` (a directory out of the tree). Layer 2 (tar): a new etc/motd, a
// whiteout of etc/gone, an opaque opq with c, and link/x (a directory where layer 1 had the
// symlink: must never write into `outside`).
struct Layout {
  std::string dir;
  Blob layer1, layer2, manifest;
};

Layout MakeLayout(const TempDir& tmp, const std::string& outside) {
  Layout l;
  l.dir = tmp.File("layout");
  const std::string l1 = tmp.File("l1"), l2 = tmp.File("l2");
  WriteText(l1 + "/etc/motd", "old motd\n");
  WriteText(l1 + "/etc/gone", "deleted by layer 2\n");
  WriteText(l1 + "/opq/a", "a\n");
  WriteText(l1 + "/opq/sub/b", "b\n");
  WriteText(l1 + "/keep/k", "kept\n");
  WriteText(l1 + "/bin/hello", "#!/bin/sh\necho hello\n");
  ::chmod((l1 + "/bin/hello").c_str(), 0755);
  fs::create_symlink(outside, l1 + "/link");
  WriteText(l2 + "/etc/motd", "new motd\n");
  WriteText(l2 + "/etc/.wh.gone", "");
  WriteText(l2 + "/opq/.wh..wh..opq", "");
  WriteText(l2 + "/opq/c", "c\n");
  WriteText(l2 + "/link/x", "not outside\n");
  fs::create_directories(l.dir);
  auto t1 = RunCommand("tar -C " + l1 + " -czf " + tmp.File("l1.tgz") + " .");
  EXPECT_EQ(t1.exit_code, 0) << t1.output;
  auto t2 = RunCommand("tar -C " + l2 + " -cf " + tmp.File("l2.tar") + " .");
  EXPECT_EQ(t2.exit_code, 0) << t2.output;
  l.layer1 = AddBlob(l.dir, tmp.File("l1.tgz"));
  l.layer2 = AddBlob(l.dir, tmp.File("l2.tar"));
  Blob config = AddJsonBlob(l.dir, R"({"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}})");
  l.manifest = AddJsonBlob(
      l.dir, "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":" +
                 Desc("application/vnd.oci.image.config.v1+json", config) + ",\"layers\":[" +
                 Desc("application/vnd.oci.image.layer.v1.tar+gzip", l.layer1) + "," +
                 Desc("application/vnd.oci.image.layer.v1.tar", l.layer2) + "]}");
  // Two manifests: the arm64 one is never read (its blob does not even exist).
  Blob arm{"sha256:" + std::string(64, 'a'), 100};
  WriteText(l.dir + "/index.json", "{\"schemaVersion\":2,\"manifests\":[" +
                                       Desc("application/vnd.oci.image.manifest.v1+json", arm,
                                            ",\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\"}") +
                                       "," +
                                       Desc("application/vnd.oci.image.manifest.v1+json", l.manifest,
                                            ",\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}") +
                                       "]}");
  WriteText(l.dir + "/oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  return l;
}

std::string BlobFile(const Layout& l, const Blob& b) { return l.dir + "/blobs/sha256/" + b.digest.substr(7); }

TEST(OciTest, ResolvesTheAmd64ManifestsLayersInOrder) {
  TempDir tmp("clone-oci");
  ASSERT_TRUE(tmp.ok());
  fs::create_directories(tmp.File("outside"));
  Layout l = MakeLayout(tmp, tmp.File("outside"));
  auto layers = ResolveOciLayers(l.dir);
  ASSERT_TRUE(layers) << layers.error().message();
  ASSERT_EQ(layers->size(), 2u);
  EXPECT_EQ((*layers)[0].digest, l.layer1.digest);
  EXPECT_EQ((*layers)[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
  EXPECT_EQ((*layers)[0].path, BlobFile(l, l.layer1));
  EXPECT_EQ((*layers)[1].digest, l.layer2.digest);
  EXPECT_EQ((*layers)[1].size, l.layer2.size);
}

TEST(OciTest, CorruptOrMissingPiecesAreRefused) {
  TempDir tmp("clone-oci");
  ASSERT_TRUE(tmp.ok());
  fs::create_directories(tmp.File("outside"));
  Layout l = MakeLayout(tmp, tmp.File("outside"));

  // A flipped byte in a layer, same size.
  const std::string layer2 = BlobFile(l, l.layer2);
  std::string data = ReadText(layer2);
  data[100] ^= 1;
  fs::permissions(layer2, fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(layer2, std::ios::binary | std::ios::trunc) << data;
  auto corrupt = ResolveOciLayers(l.dir);
  ASSERT_FALSE(corrupt);
  EXPECT_NE(corrupt.error().message().find("is corrupt"), std::string::npos) << corrupt.error().message();
  // A truncated one.
  data.resize(data.size() - 1);
  std::ofstream(layer2, std::ios::binary | std::ios::trunc) << data;
  auto truncated = ResolveOciLayers(l.dir);
  ASSERT_FALSE(truncated);
  EXPECT_NE(truncated.error().message().find("descriptor says"), std::string::npos) << truncated.error().message();
  // A missing layer.
  fs::remove(layer2);
  EXPECT_FALSE(ResolveOciLayers(l.dir));

  fs::remove(l.dir + "/index.json");
  auto no_index = ResolveOciLayers(l.dir);
  ASSERT_FALSE(no_index);
  EXPECT_NE(no_index.error().message().find("index.json is missing"), std::string::npos) << no_index.error().message();
  fs::remove(l.dir + "/oci-layout");
  auto no_marker = ResolveOciLayers(l.dir);
  ASSERT_FALSE(no_marker);
  EXPECT_NE(no_marker.error().message().find("oci-layout is missing"), std::string::npos)
      << no_marker.error().message();
  EXPECT_FALSE(ResolveOciLayers(tmp.File("nope")));

  // Hostile digests never name a path outside blobs/sha256.
  WriteText(l.dir + "/oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  WriteText(l.dir + "/index.json", R"({"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",)"
                                   R"("digest":"sha256:../../../etc/passwd","size":10}]})");
  auto hostile = ResolveOciLayers(l.dir);
  ASSERT_FALSE(hostile);
  EXPECT_NE(hostile.error().message().find("malformed digest"), std::string::npos) << hostile.error().message();
  WriteText(l.dir + "/index.json", "{\"manifests\": [");
  EXPECT_FALSE(ResolveOciLayers(l.dir));
}

TEST(OciTest, ApplyLayerHandlesWhiteoutsOpaqueDirsAndReplacements) {
  TempDir tmp("clone-oci");
  ASSERT_TRUE(tmp.ok());
  const std::string root = tmp.File("root"), layer = tmp.File("layer"), outside = tmp.File("outside");
  WriteText(root + "/etc/motd", "old\n");
  WriteText(root + "/etc/gone", "x\n");
  WriteText(root + "/gone-dir/deep/f", "x\n");
  WriteText(root + "/opq/a", "a\n");
  WriteText(root + "/opq/sub/b", "b\n");
  WriteText(root + "/was-dir/f", "x\n");
  WriteText(outside + "/victim", "must survive\n");
  fs::create_symlink(outside, root + "/link");
  fs::create_symlink(outside, root + "/wh-through-link");

  WriteText(layer + "/etc/motd", "new\n");
  WriteText(layer + "/etc/.wh.gone", "");
  WriteText(layer + "/.wh.gone-dir", "");
  WriteText(layer + "/opq/.wh..wh..opq", "");
  WriteText(layer + "/opq/c", "c\n");
  WriteText(layer + "/was-dir", "now a file\n");
  WriteText(layer + "/link/x", "inside\n");
  WriteText(layer + "/wh-through-link/.wh.victim", "");  // a directory replacing the symlink
  WriteText(layer + "/.wh..wh.plnk", "");                // aufs bookkeeping: ignored
  ::chmod((layer + "/opq").c_str(), 0750);

  auto r = ApplyOciLayer(layer, root);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(ReadText(root + "/etc/motd"), "new\n");
  EXPECT_FALSE(fs::exists(root + "/etc/gone"));
  EXPECT_FALSE(fs::exists(root + "/etc/.wh.gone"));
  EXPECT_FALSE(fs::exists(root + "/gone-dir"));
  EXPECT_FALSE(fs::exists(root + "/.wh.gone-dir"));
  EXPECT_FALSE(fs::exists(root + "/.wh..wh.plnk"));
  EXPECT_FALSE(fs::exists(root + "/opq/a"));
  EXPECT_FALSE(fs::exists(root + "/opq/sub"));
  EXPECT_FALSE(fs::exists(root + "/opq/.wh..wh..opq"));
  EXPECT_EQ(ReadText(root + "/opq/c"), "c\n");
  EXPECT_EQ(fs::status(root + "/opq").permissions() & fs::perms::all,
            fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  EXPECT_EQ(ReadText(root + "/was-dir"), "now a file\n");
  EXPECT_FALSE(fs::is_symlink(root + "/link"));
  EXPECT_EQ(ReadText(root + "/link/x"), "inside\n");
  EXPECT_FALSE(fs::is_symlink(root + "/wh-through-link"));
  EXPECT_TRUE(fs::is_directory(root + "/wh-through-link"));
  EXPECT_EQ(ReadText(outside + "/victim"), "must survive\n");
  EXPECT_FALSE(fs::exists(outside + "/x"));
}

TEST(OciTest, CreateRootfsFromOciLayoutMakesTheMergedImage) {
  TempDir tmp("clone-oci");
  ASSERT_TRUE(tmp.ok());
  const std::string outside = tmp.File("outside");
  fs::create_directories(outside);
  Layout l = MakeLayout(tmp, outside);
  RootfsCreateOptions o;
  o.source = RootfsSource::kOci;
  o.source_path = l.dir;
  o.output = tmp.File("out.img");
  o.size_bytes = 64ull << 20;
  auto r = CreateRootfs(o);
  ASSERT_TRUE(r) << r.error().message();
  auto fsck = RunCommand("e2fsck -fn " + o.output);
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
  auto debugfs = [&](const std::string& request) {
    auto d = RunCommand("debugfs -R '" + request + "' " + o.output);
    EXPECT_EQ(d.exit_code, 0) << d.output;
    return d.output;
  };
  std::string top = debugfs("ls -l /");
  for (const char* name : {"etc", "opq", "keep", "bin", "link"}) EXPECT_NE(top.find(name), std::string::npos) << top;
  EXPECT_EQ(top.find(".wh."), std::string::npos) << top;
  EXPECT_NE(debugfs("cat /etc/motd").find("new motd"), std::string::npos);
  EXPECT_NE(debugfs("cat /etc/hostname").find("clone\n"), std::string::npos);  // customised as usual
  std::string etc = debugfs("ls -l /etc");
  EXPECT_EQ(etc.find("gone"), std::string::npos) << etc;
  std::string opq = debugfs("ls -l /opq");
  EXPECT_NE(opq.find(" c"), std::string::npos) << opq;
  EXPECT_EQ(opq.find(" a"), std::string::npos) << opq;
  EXPECT_EQ(opq.find("sub"), std::string::npos) << opq;
  EXPECT_EQ(opq.find(".wh."), std::string::npos) << opq;
  EXPECT_NE(debugfs("cat /keep/k").find("kept"), std::string::npos);
  EXPECT_NE(debugfs("cat /link/x").find("not outside"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(outside));
  // Only the layout, the layer sources, `outside` and the image remain: no temporaries.
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".out.img")) << e.path();

  // A corrupt layer: refused before anything is created.
  const std::string layer1 = BlobFile(l, l.layer1);
  fs::permissions(layer1, fs::perms::owner_write, fs::perm_options::add);
  std::string data = ReadText(layer1);
  data[10] ^= 1;
  std::ofstream(layer1, std::ios::binary | std::ios::trunc) << data;
  o.output = tmp.File("bad.img");
  auto bad = CreateRootfs(o);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("is corrupt"), std::string::npos) << bad.error().message();
  EXPECT_FALSE(fs::exists(o.output));
}

}  // namespace
}  // namespace clonevm
