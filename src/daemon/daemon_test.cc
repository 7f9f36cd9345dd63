#include <gtest/gtest.h>

int Placeholder() { return 0; }
