/*
 * Base64 for Meridian: etcd's JSON gateway carries keys and values as standard
 * base64, and tokens and key fingerprints use the URL-safe form. The URL
 * form goes through libsodium's constant-time codec (it carries secrets);
 * the standard form, bulk etcd data that is not secret, through a
 * table-driven one several times faster. Bounds-checked; not streaming.
 */
#ifndef MERIDIAN_BASE64_H
#define MERIDIAN_BASE64_H

#include <stddef.h>

enum mer_base64_variant {
	MER_BASE64_STD = 0, /* RFC 4648 §4, "+/" with "=" padding (etcd) */
	MER_BASE64_URL = 1  /* RFC 4648 §5, "-_" without padding (tokens) */
};

/* Length of the encoding of n bytes, without the terminating NUL; 0 when n
 * is too large to encode (the caller should then refuse the input). */
size_t mer_base64_encoded_len(size_t n, enum mer_base64_variant v);

/*
 * Encodes n bytes into out (cap bytes, NUL-terminated on success) and sets
 * *out_len (may be NULL) to the text length. MER_ETOOBIG when cap is smaller
 * than mer_base64_encoded_len() + 1. Thread-safe; never allocates.
 */
int mer_base64_encode_buf(const void *bin, size_t n, enum mer_base64_variant v,
			  char *out, size_t cap, size_t *out_len);

/* As mer_base64_encode_buf, into a malloc'd NUL-terminated string that the
 * caller frees. MER_ENOMEM, MER_ETOOBIG. */
int mer_base64_encode(const void *bin, size_t n, enum mer_base64_variant v,
		      char **out, size_t *out_len);

/*
 * Decodes exactly len characters of text (no whitespace, no trailing
 * garbage; STD needs its padding, URL must have none). MER_EPARSE on any
 * malformed input, MER_ETOOBIG when the result does not fit in cap bytes.
 */
int mer_base64_decode_buf(const char *text, size_t len,
			  enum mer_base64_variant v, void *out, size_t cap,
			  size_t *out_len);

/* As mer_base64_decode_buf, into a malloc'd buffer the caller frees. One NUL
 * byte follows the data (not counted in *out_len), so text values can be
 * used as C strings; binary data may of course hold NULs of its own. */
int mer_base64_decode(const char *text, size_t len, enum mer_base64_variant v,
		      unsigned char **out, size_t *out_len);

#endif
