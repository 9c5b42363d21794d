/*
 * Base64 encode/decode over libsodium, with the length checks libsodium
 * leaves to its caller (it aborts on a short buffer). Not for streaming or
 * for lenient decoding of hand-typed input: malformed text is an error.
 */
#include "common/base64.h"

#include <stdint.h>
#include <stdlib.h>

#include <sodium.h>

#include "common/err.h"

static int sodium_variant(enum mer_base64_variant v)
{
	return v == MER_BASE64_URL ? sodium_base64_VARIANT_URLSAFE_NO_PADDING
				   : sodium_base64_VARIANT_ORIGINAL;
}

size_t mer_base64_encoded_len(size_t n, enum mer_base64_variant v)
{
	/* Four characters per three bytes; refuse sizes whose length would
	 * overflow rather than wrap. */
	if (n > (SIZE_MAX - 8) / 4 * 3)
		return 0;
	if (v == MER_BASE64_URL)
		return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
	return (n + 2) / 3 * 4;
}

int mer_base64_encode_buf(const void *bin, size_t n, enum mer_base64_variant v,
			  char *out, size_t cap, size_t *out_len)
{
	size_t need = mer_base64_encoded_len(n, v);

	if (n > 0 && need == 0)
		return MER_ETOOBIG;
	if (!out || cap < need + 1)
		return MER_ETOOBIG;
	if (n == 0) {
		out[0] = '\0';
	} else {
		/* libsodium wants exactly its own size computation or more. */
		size_t sneed = sodium_base64_ENCODED_LEN(n, sodium_variant(v));
		if (cap < sneed)
			return MER_ETOOBIG;
		sodium_bin2base64(out, cap, bin, n, sodium_variant(v));
	}
	if (out_len)
		*out_len = need;
	return MER_OK;
}

int mer_base64_encode(const void *bin, size_t n, enum mer_base64_variant v,
		      char **out, size_t *out_len)
{
	size_t need = mer_base64_encoded_len(n, v);
	char *buf;
	int rv;

	*out = NULL;
	if (n > 0 && need == 0)
		return MER_ETOOBIG;
	/* sodium's own bound can exceed ours by a byte or two (it rounds
	 * up for unpadded variants); allocate the larger. */
	size_t cap = n ? sodium_base64_ENCODED_LEN(n, sodium_variant(v)) : 1;
	if (cap < need + 1)
		cap = need + 1;
	buf = malloc(cap);
	if (!buf)
		return MER_ENOMEM;
	rv = mer_base64_encode_buf(bin, n, v, buf, cap, out_len);
	if (rv != 0) {
		free(buf);
		return rv;
	}
	*out = buf;
	return MER_OK;
}

int mer_base64_decode_buf(const char *text, size_t len,
			  enum mer_base64_variant v, void *out, size_t cap,
			  size_t *out_len)
{
	const char *end = NULL;
	size_t n = 0;

	if (len == 0) {
		if (out_len)
			*out_len = 0;
		return MER_OK;
	}
	if (!text)
		return MER_EINVAL;
	/* Padded text must come in whole quads; sodium accepts some short
	 * forms we do not want to treat as canonical. */
	if (v == MER_BASE64_STD && len % 4 != 0)
		return MER_EPARSE;
	if (v == MER_BASE64_URL && len % 4 == 1)
		return MER_EPARSE;
	if (len / 4 * 3 + 3 > cap) {
		/* The bound may overestimate by up to 2 bytes (padding);
		 * decode to find the true size before refusing. */
		size_t exact = len / 4 * 3;
		if (v == MER_BASE64_STD) {
			if (text[len - 1] == '=')
				exact--;
			if (len >= 2 && text[len - 2] == '=')
				exact--;
		} else {
			exact += len % 4 ? len % 4 - 1 : 0;
		}
		if (exact > cap)
			return MER_ETOOBIG;
	}
	if (sodium_base642bin(out, cap, text, len, NULL, &n, &end,
			      sodium_variant(v)) != 0)
		return MER_EPARSE;
	if (end != text + len)
		return MER_EPARSE;
	if (out_len)
		*out_len = n;
	return MER_OK;
}

int mer_base64_decode(const char *text, size_t len, enum mer_base64_variant v,
		      unsigned char **out, size_t *out_len)
{
	unsigned char *buf;
	size_t cap = len / 4 * 3 + 3, n = 0;
	int rv;

	*out = NULL;
	buf = malloc(cap + 1);
	if (!buf)
		return MER_ENOMEM;
	rv = mer_base64_decode_buf(text, len, v, buf, cap, &n);
	if (rv != 0) {
		free(buf);
		return rv;
	}
	buf[n] = '\0';
	*out = buf;
	if (out_len)
		*out_len = n;
	return MER_OK;
}
