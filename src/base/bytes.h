// Byte views: the one place Clone looks at an object's or a string's memory as bytes.
//
// AsBytes(x) views a plain (trivially copyable) struct, or the characters of a string, as
// std::span<const uint8_t>; AsWritableBytes(x) the same for writing into a plain struct; AsChars(b)
// views bytes as a std::string_view. Every such view in the code goes through these, so the casts
// (and their SAFETY argument) live here once.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace clonevm {

template <typename T>
requires std::is_trivially_copyable_v<T> &&(!std::is_pointer_v<T>)std::span<const uint8_t> AsBytes(const T& object) {
  // SAFETY: any object may be viewed as bytes (unsigned char aliases everything); T is trivially
  // copyable, so its bytes are its value.
  return {reinterpret_cast<const uint8_t*>(&object), sizeof(T)};
}

template <typename T>
requires std::is_trivially_copyable_v<T> &&
    (!std::is_pointer_v<T>)&&(!std::is_const_v<T>)std::span<uint8_t> AsWritableBytes(T& object) {
  // SAFETY: as above; any byte pattern written is a value of a trivially copyable T that Clone
  // reads only through its fields (the structs are KVM/virtio/ELF layouts of plain integers).
  return {reinterpret_cast<uint8_t*>(&object), sizeof(T)};
}

inline std::span<const uint8_t> AsBytes(std::string_view text) {
  // SAFETY: char and uint8_t have the same size and representation.
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}
inline std::span<const uint8_t> AsBytes(const std::string& text) { return AsBytes(std::string_view(text)); }
inline std::span<const uint8_t> AsBytes(const char* text) = delete;  // say std::string_view(text)

inline std::string_view AsChars(std::span<const uint8_t> bytes) {
  // SAFETY: as above.
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace clonevm
