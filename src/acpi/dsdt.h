// The DSDT's AML body (everything after the table header), split from tables.cc so the device
// descriptions stay readable. Internal to the acpi layer.
#pragma once

#include "acpi/aml.h"
#include "acpi/tables.h"

namespace clonevm::acpi {

// Builds \_S5_ and the \_SB devices for `config`. The config must already be validated by
// BuildAcpiTables (virtio windows below 4 GiB, at most 4096 virtio devices).
aml::Bytes BuildDsdtBody(const AcpiConfig& config);

}  // namespace clonevm::acpi
