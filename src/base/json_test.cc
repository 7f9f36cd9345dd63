#include "base/json.h"

#include <gtest/gtest.h>

namespace clonevm {
namespace {

using nlohmann::json;

template <typename T>
std::string ErrorOf(const Result<T>& r) {
  return r ? std::string("(no error)") : r.error().message();
}

TEST(JsonReaderTest, RequiredAndOptionalFields) {
  json j = {{"name", "vm1"}, {"cpus", 2}, {"ro", true}, {"ratio", 0.5}, {"gone", nullptr}};
  JsonReader r(j);
  EXPECT_EQ(*r.String("name"), "vm1");
  EXPECT_EQ(*r.Uint<uint32_t>("cpus", 1, 8), 2U);
  EXPECT_TRUE(*r.Bool("ro"));
  EXPECT_DOUBLE_EQ(*r.Number("ratio"), 0.5);
  EXPECT_FALSE(r.OptString("gone")->has_value());  // null is absent
  EXPECT_EQ(*r.UintOr<uint16_t>("rows", 24), 24);
  EXPECT_EQ(ErrorOf(r.String("missing")), "missing: required field missing");
  EXPECT_EQ(ErrorOf(r.Bool("gone")), "gone: required field missing");
}

TEST(JsonReaderTest, TypesAndRangesAreCheckedNotConverted) {
  json j = {{"neg", -1}, {"frac", 1.5}, {"big", 70000}, {"str", "1"}, {"nul", std::string("a\0b", 3)}};
  JsonReader r(j);
  EXPECT_EQ(ErrorOf(r.Uint<uint64_t>("neg")), "neg: expected a non-negative integer up to 18446744073709551615");
  EXPECT_EQ(ErrorOf(r.Uint<uint8_t>("frac")), "frac: expected a non-negative integer up to 255");
  EXPECT_EQ(ErrorOf(r.Uint<uint16_t>("big")), "big: expected a non-negative integer up to 65535");
  EXPECT_EQ(ErrorOf(r.Uint<uint32_t>("big", 1, 100)), "big: expected an integer in [1, 100]");
  EXPECT_EQ(ErrorOf(r.Bool("str")), "str: expected true or false");
  EXPECT_EQ(ErrorOf(r.Number("str")), "str: expected a number");
  EXPECT_EQ(ErrorOf(r.String("nul")), "nul: contains a NUL byte");
  EXPECT_EQ(ErrorOf(r.String("str", 0)), "str: longer than 0 bytes");
}

TEST(JsonReaderTest, NestedPathsNameTheField) {
  json j = {{"disks", json::array({{{"path", "/a"}}, {{"path", 5}}})}, {"rootfs", {{"img", "/r"}}}};
  JsonReader r(j);
  std::vector<std::string> paths;
  auto read = +[](const JsonReader& d) -> Result<std::string> { return d.String("path"); };
  EXPECT_EQ(ErrorOf(r.Each("disks", read, &paths)), "disks[1].path: expected a string");
  ASSERT_EQ(paths.size(), 1U);
  auto rootfs = r.Child("rootfs");
  ASSERT_TRUE(rootfs);
  EXPECT_EQ(ErrorOf(rootfs->Expect({"image"})), "rootfs.img: unknown field");
  EXPECT_EQ(ErrorOf(JsonReader(json::array()).Expect({})), "expected a JSON object");
  EXPECT_EQ(ErrorOf(r.Array("disks", 1)), "disks: more than 1 items");
  auto items = r.Array("disks", 2);
  ASSERT_TRUE(items);
  EXPECT_EQ(ErrorOf((*items)[1].String("path")), "disks[1].path: expected a string");
}

TEST(JsonReaderTest, PresentOnlySettersKeepDefaults) {
  json j = {{"name", "x"}, {"n", 7}, {"flag", "yes"}};
  JsonReader r(j);
  std::string name = "default", other = "keep";
  uint8_t n = 1, m = 2;
  bool flag = false;
  ASSERT_TRUE(r.Get("name", &name));
  ASSERT_TRUE(r.Get("other", &other));
  ASSERT_TRUE(r.GetUnsigned("n", &n));
  ASSERT_TRUE(r.GetUnsigned("m", &m));
  EXPECT_EQ(name, "x");
  EXPECT_EQ(other, "keep");
  EXPECT_EQ(n, 7);
  EXPECT_EQ(m, 2);
  EXPECT_EQ(ErrorOf(r.Get("flag", &flag)), "flag: expected true or false");
  EXPECT_EQ(ErrorOf(r.StringList("name", 4, true)), "name: expected an array of strings");
}

TEST(JsonReaderTest, VersionsAndDocuments) {
  EXPECT_EQ(*JsonReader(json{{"version", 2}}).Version(3, "dev"), 2);
  EXPECT_EQ(ErrorOf(JsonReader(json{{"version", 4}}).Version(3, "dev")),
            "restoring dev: state version 4 is not supported (this build reads 1..3)");
  EXPECT_EQ(ErrorOf(JsonReader(json{{"v", 1}}).Version(3, "dev")), "restoring dev: no integer \"version\"");
  EXPECT_EQ(ErrorOf(ParseJsonObject("{", "the body")), "the body is not valid JSON");
  EXPECT_EQ(ErrorOf(ParseJsonObject("[1]", "the body")), "the body is not a JSON object");
  EXPECT_TRUE(ParseJsonObject("{\"a\":1}", "the body"));
}

}  // namespace
}  // namespace clonevm
