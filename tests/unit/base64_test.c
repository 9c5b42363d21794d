/* Tests for common/base64: RFC 4648 vectors, binary round trips, rejection of
 * malformed text and buffer bounds. */
#include "common/base64.h"
#include "common/err.h"
#include "tests/harness.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

struct vec {
	const char *bin;
	const char *std;
	const char *url;
};

/* RFC 4648 §10, plus bytes that differ between the alphabets. */
static const struct vec vecs[] = {
    {"", "", ""},
    {"f", "Zg==", "Zg"},
    {"fo", "Zm8=", "Zm8"},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg==", "Zm9vYg"},
    {"fooba", "Zm9vYmE=", "Zm9vYmE"},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
    {"\xfb\xff\xbf", "+/+/", "-_-_"},
};

static void test_vectors(void)
{
	for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
		const struct vec *v = &vecs[i];
		size_t n = strlen(v->bin), len = 99;
		char *s = NULL;

		T_OK(mer_base64_encode(v->bin, n, MER_BASE64_STD, &s, &len));
		T_EQ_STR(s, v->std);
		T_EQ_INT(len, strlen(v->std));
		T_EQ_INT(mer_base64_encoded_len(n, MER_BASE64_STD), len);
		free(s);
		T_OK(mer_base64_encode(v->bin, n, MER_BASE64_URL, &s, &len));
		T_EQ_STR(s, v->url);
		T_EQ_INT(mer_base64_encoded_len(n, MER_BASE64_URL), len);
		free(s);

		unsigned char *b = NULL;
		T_OK(mer_base64_decode(v->std, strlen(v->std), MER_BASE64_STD,
				       &b, &len));
		T_EQ_INT(len, n);
		T_EXPECT(memcmp(b, v->bin, n) == 0);
		T_EQ_INT(b[len], 0);
		free(b);
		T_OK(mer_base64_decode(v->url, strlen(v->url), MER_BASE64_URL,
				       &b, &len));
		T_EQ_INT(len, n);
		T_EXPECT(memcmp(b, v->bin, n) == 0);
		free(b);
	}
}

static void test_binary_round_trip(void)
{
	unsigned char bin[700];
	for (size_t i = 0; i < sizeof(bin); i++)
		bin[i] = (unsigned char)(i * 37 + 11);
	bin[5] = 0;
	for (size_t n = 0; n <= sizeof(bin); n += 7) {
		for (int v = 0; v <= 1; v++) {
			char *s = NULL;
			unsigned char *b = NULL;
			size_t len = 0, blen = 0;
			T_OK(mer_base64_encode(bin, n, v, &s, &len));
			T_OK(mer_base64_decode(s, len, v, &b, &blen));
			T_EQ_INT(blen, n);
			T_EXPECT(memcmp(b, bin, n) == 0);
			free(s);
			free(b);
		}
	}
}

static void test_rejects_malformed(void)
{
	static const char *bad_std[] = {
	    "Zg",		     /* missing padding */
	    "Zg=",		     /* short padding */
	    "Zm9v!",		     /* bad character */
	    "Zm9 v",		     /* whitespace */
	    "Zm9vYg==x", "Zg==Zg==", /* garbage after padding */
	    "-_-_",		     /* URL alphabet in STD */
	    "Z===",
	};
	static const char *bad_url[] = {
	    "Zg==", /* padding in URL */
	    "+/+/", /* STD alphabet in URL */
	    "Z",    /* a lone sextet cannot be a byte */
	};
	unsigned char *b = (unsigned char *)"sentinel";
	for (size_t i = 0; i < sizeof(bad_std) / sizeof(bad_std[0]); i++) {
		int rv = mer_base64_decode(bad_std[i], strlen(bad_std[i]),
					   MER_BASE64_STD, &b, NULL);
		if (rv != MER_EPARSE)
			t_fail(__FILE__, __LINE__, "std \"%s\" gave %d",
			       bad_std[i], rv);
		T_EXPECT(b == NULL);
	}
	for (size_t i = 0; i < sizeof(bad_url) / sizeof(bad_url[0]); i++) {
		int rv = mer_base64_decode(bad_url[i], strlen(bad_url[i]),
					   MER_BASE64_URL, &b, NULL);
		if (rv != MER_EPARSE)
			t_fail(__FILE__, __LINE__, "url \"%s\" gave %d",
			       bad_url[i], rv);
	}
}

static void test_buffer_bounds(void)
{
	char out[9];
	size_t len = 0;

	/* "foobar" needs 8 characters and the NUL. */
	T_EQ_INT(
	    mer_base64_encode_buf("foobar", 6, MER_BASE64_STD, out, 8, &len),
	    MER_ETOOBIG);
	T_OK(mer_base64_encode_buf("foobar", 6, MER_BASE64_STD, out, 9, &len));
	T_EQ_STR(out, "Zm9vYmFy");

	unsigned char bin[6];
	T_EQ_INT(
	    mer_base64_decode_buf("Zm9vYmFy", 8, MER_BASE64_STD, bin, 5, &len),
	    MER_ETOOBIG);
	/* The exact size fits even though the quick bound says 9. */
	T_OK(
	    mer_base64_decode_buf("Zm9vYmFy", 8, MER_BASE64_STD, bin, 6, &len));
	T_EQ_INT(len, 6);
	T_OK(
	    mer_base64_decode_buf("Zm9vYg==", 8, MER_BASE64_STD, bin, 4, &len));
	T_EQ_INT(len, 4);
	T_OK(mer_base64_decode_buf("Zm9vYg", 6, MER_BASE64_URL, bin, 4, &len));
	T_EQ_INT(len, 4);
	T_EXPECT(memcmp(bin, "foob", 4) == 0);
	T_EQ_INT(mer_base64_encoded_len((size_t)-1, MER_BASE64_STD), 0);
}

/* The table-driven standard codec agrees with libsodium's on every length
 * and byte, and refuses texts whose padding hides set bits (each value has
 * one text). */
static void test_std_matches_sodium(void)
{
	unsigned char bin[300], back[300];
	char mine[420], ref[420];
	size_t len = 0, n = 0;

	for (size_t k = 0; k < sizeof(bin); k++) {
		randombytes_buf(bin, k);
		T_OK(mer_base64_encode_buf(bin, k, MER_BASE64_STD, mine,
					   sizeof(mine), &len));
		sodium_bin2base64(ref, sizeof(ref), bin, k,
				  sodium_base64_VARIANT_ORIGINAL);
		T_EQ_STR(mine, ref);
		T_OK(mer_base64_decode_buf(mine, len, MER_BASE64_STD, back,
					   sizeof(back), &n));
		T_EQ_INT(n, k);
		T_EXPECT(memcmp(back, bin, k) == 0);
	}
	T_EQ_INT(mer_base64_decode_buf("Zm9=", 4, MER_BASE64_STD, back,
				       sizeof(back), &n),
		 MER_EPARSE);
	T_EQ_INT(mer_base64_decode_buf("Zh==", 4, MER_BASE64_STD, back,
				       sizeof(back), &n),
		 MER_EPARSE);
	T_EQ_INT(mer_base64_decode_buf("Z===", 4, MER_BASE64_STD, back,
				       sizeof(back), &n),
		 MER_EPARSE);
	T_EQ_INT(mer_base64_decode_buf("Zm=v", 4, MER_BASE64_STD, back,
				       sizeof(back), &n),
		 MER_EPARSE);
}

static const struct t_case cases[] = {
    {"vectors", test_vectors},
    {"binary_round_trip", test_binary_round_trip},
    {"rejects_malformed", test_rejects_malformed},
    {"buffer_bounds", test_buffer_bounds},
    {"std_matches_sodium", test_std_matches_sodium},
};

T_MAIN("base64", cases)
