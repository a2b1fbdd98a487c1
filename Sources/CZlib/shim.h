#ifndef ES_CZLIB_SHIM_H
#define ES_CZLIB_SHIM_H
#include <zlib.h>

// deflateInit/inflateInit are function-like macros, which Swift cannot import.
static inline int es_deflate_init(z_streamp strm, int level) {
    return deflateInit(strm, level);
}
static inline int es_inflate_init(z_streamp strm) {
    return inflateInit(strm);
}
#endif
