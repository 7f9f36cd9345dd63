// fmt's compiled part, built into Clone when CLONE_STATIC_DEPS links its dependencies statically
// (CMakeLists.txt): Debian ships libfmt only as a shared library (which drags libstdc++.so into the
// process), and fmt's header-only mode re-compiles this code in every source file (~4 s each at -O2).
// format-inl.h defines fmt's out-of-line functions; the templates the headers declare `extern` for
// char are instantiated here once.
#include <fmt/format-inl.h>

FMT_BEGIN_NAMESPACE
namespace detail {

template auto dragonbox::to_decimal(float x) noexcept -> dragonbox::decimal_fp<float>;
template auto dragonbox::to_decimal(double x) noexcept -> dragonbox::decimal_fp<double>;
template locale_ref::locale_ref(const std::locale& loc);
template auto locale_ref::get<std::locale>() const -> std::locale;
template auto thousands_sep_impl(locale_ref) -> thousands_sep_result<char>;
template auto decimal_point_impl(locale_ref) -> char;
template void buffer<char>::append(const char*, const char*);
template void vformat_to(buffer<char>&, string_view, basic_format_args<FMT_BUFFER_CONTEXT(char)>, locale_ref);

}  // namespace detail
FMT_END_NAMESPACE
