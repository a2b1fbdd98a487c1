#ifndef ES_CZLIB_SHIM_H
#define ES_CZLIB_SHIM_H
#include <zlib.h>

// deflateInit2/inflateInit are function-like macros, which Swift cannot import.
// deflateInit2 with zlib's default window and memory; `strategy` is Z_DEFAULT_STRATEGY or Z_FIXED.
static inline int es_deflate_init_strategy(z_streamp strm, int level, int strategy) {
    return deflateInit2(strm, level, Z_DEFLATED, MAX_WBITS, 8, strategy);
}
static inline int es_inflate_init(z_streamp strm) {
    return inflateInit(strm);
}
#endif
