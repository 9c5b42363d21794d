/*
 * Base64 encode/decode: the URL variant over libsodium (constant-time, for
 * tokens), with the length checks libsodium leaves to its caller (it aborts
 * on a short buffer); the standard variant (etcd data) table-driven. Not
 * for streaming or for lenient decoding of hand-typed input: malformed text
 * is an error.
 */
#include "common/base64.h"

#include <stdint.h>
#include <stdlib.h>

#include <sodium.h>

#include "common/err.h"

/*
 * The standard variant carries etcd's keys and values: bulk data that is
 * not secret, encoded and decoded for every etcd request. libsodium's codec
 * is constant-time (it guards secrets against timing attacks) and costs
 * ~20 instructions a byte, a tenth of the broker's time per submitted job;
 * these table-driven loops cost a few. The URL variant (tokens, key
 * fingerprints) stays on libsodium.
 */
static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void std_encode(const unsigned char *in, size_t n, char *out)
{
	size_t i = 0;

	for (; i + 3 <= n; i += 3) {
		uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
			     in[i + 2];
		*out++ = std_alphabet[w >> 18];
		*out++ = std_alphabet[(w >> 12) & 63];
		*out++ = std_alphabet[(w >> 6) & 63];
		*out++ = std_alphabet[w & 63];
	}
	if (n - i == 1) {
		uint32_t w = (uint32_t)in[i] << 16;
		*out++ = std_alphabet[w >> 18];
		*out++ = std_alphabet[(w >> 12) & 63];
		*out++ = '=';
		*out++ = '=';
	} else if (n - i == 2) {
		uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*out++ = std_alphabet[w >> 18];
		*out++ = std_alphabet[(w >> 12) & 63];
		*out++ = std_alphabet[(w >> 6) & 63];
		*out++ = '=';
	}
	*out = '\0';
}

static int std_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decodes len (a multiple of 4) characters; at most two '=' and only at
 * the end; the bits padding leaves over must be zero (one text per
 * value). */
static int std_decode(const char *text, size_t len, unsigned char *out,
		      size_t *out_len)
{
	size_t pad = 0, o = 0;

	if (text[len - 1] == '=')
		pad = text[len - 2] == '=' ? 2 : 1;
	for (size_t i = 0; i < len; i += 4) {
		int last = i + 4 == len;
		int a = std_value((unsigned char)text[i]);
		int b = std_value((unsigned char)text[i + 1]);
		int c = last && pad == 2
			    ? 0
			    : std_value((unsigned char)text[i + 2]);
		int d = last && pad ? 0 : std_value((unsigned char)text[i + 3]);
		if ((a | b | c | d) < 0)
			return MER_EPARSE;
		uint32_t w = (uint32_t)a << 18 | (uint32_t)b << 12 |
			     (uint32_t)c << 6 | (uint32_t)d;
		out[o++] = (unsigned char)(w >> 16);
		if (!(last && pad == 2))
			out[o++] = (unsigned char)(w >> 8);
		if (!(last && pad))
			out[o++] = (unsigned char)w;
		if (last &&
		    ((pad == 2 && (w & 0xffff)) || (pad == 1 && (w & 0xff))))
			return MER_EPARSE;
	}
	*out_len = o;
	return MER_OK;
}

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
	} else if (v == MER_BASE64_STD) {
		std_encode(bin, n, out);
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
	if (v == MER_BASE64_STD) {
		int rv = std_decode(text, len, out, &n);
		if (rv)
			return rv;
		if (out_len)
			*out_len = n;
		return MER_OK;
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
