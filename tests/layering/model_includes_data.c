/* A wrong-way arrow planted on purpose: a model/ file may not use data/ (the
 * layers of docs/design.md). The `layering_build_refuses_wrong_arrow` test
 * compiles this with the include paths of the model library and expects the
 * build to fail because data/'s headers are not on them. Never part of ldm. */
#include "dit.h"
#include "loader.h"

int layering_planted_include(void) { return (int)sizeof(loader_options); }
