/*
 * Join token text and hashing. Not storage or policy (expiry, single use):
 * those are the broker's, in broker/membership.c.
 */
#include "token.h"

#include <sodium.h>
#include <string.h>

#include "err.h"

static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
static const char hash_key[] = "meridian-token-v1";

static void random_chars(char *out, size_t n)
{
	uint8_t r[64];

	randombytes_buf(r, n);
	/* 256 is a multiple of 32, so masking keeps the choice uniform. */
	for (size_t i = 0; i < n; i++)
		out[i] = alphabet[r[i] & 31];
	sodium_memzero(r, sizeof(r));
}

static int in_alphabet(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '2' && c <= '7');
}

int mer_token_generate(char out[MER_TOKEN_SIZE])
{
	if (sodium_init() < 0)
		return MER_ECRYPTO;
	random_chars(out, MER_TOKEN_ID_LEN);
	out[MER_TOKEN_ID_LEN] = '.';
	random_chars(out + MER_TOKEN_ID_LEN + 1, MER_TOKEN_SECRET_LEN);
	out[MER_TOKEN_LEN] = '\0';
	return 0;
}

int mer_token_id_valid(const char *s)
{
	if (!s || strlen(s) != MER_TOKEN_ID_LEN)
		return 0;
	for (size_t i = 0; i < MER_TOKEN_ID_LEN; i++)
		if (!in_alphabet(s[i]))
			return 0;
	return 1;
}

int mer_token_parse(const char *text, struct mer_token *t)
{
	memset(t, 0, sizeof(*t));
	if (!text || strnlen(text, MER_TOKEN_LEN + 1) != MER_TOKEN_LEN ||
	    text[MER_TOKEN_ID_LEN] != '.')
		return MER_EPARSE;
	for (size_t i = 0; i < MER_TOKEN_LEN; i++) {
		if (i == MER_TOKEN_ID_LEN)
			continue;
		if (!in_alphabet(text[i]))
			return MER_EPARSE;
	}
	memcpy(t->id, text, MER_TOKEN_ID_LEN);
	memcpy(t->secret, text + MER_TOKEN_ID_LEN + 1, MER_TOKEN_SECRET_LEN);
	return 0;
}

/*
 * A fast keyed BLAKE2b, not argon2: the secret is 160 uniformly random bits,
 * so a stolen hash cannot be brute-forced whatever the hash speed, and a
 * slow hash would only let anyone who can reach the join endpoint burn the
 * broker's CPU.
 */
void mer_token_hash(const struct mer_token *t,
		    uint8_t out[MER_TOKEN_HASH_BYTES])
{
	crypto_generichash_state st;

	crypto_generichash_init(&st, (const uint8_t *)hash_key,
				sizeof(hash_key) - 1, MER_TOKEN_HASH_BYTES);
	crypto_generichash_update(&st, (const uint8_t *)t->id,
				  MER_TOKEN_ID_LEN);
	crypto_generichash_update(&st, (const uint8_t *)".", 1);
	crypto_generichash_update(&st, (const uint8_t *)t->secret,
				  MER_TOKEN_SECRET_LEN);
	crypto_generichash_final(&st, out, MER_TOKEN_HASH_BYTES);
	sodium_memzero(&st, sizeof(st));
}

void mer_token_hash_b64(const struct mer_token *t,
			char out[MER_TOKEN_HASH_B64_SIZE])
{
	uint8_t h[MER_TOKEN_HASH_BYTES];

	mer_token_hash(t, h);
	sodium_bin2base64(out, MER_TOKEN_HASH_B64_SIZE, h, sizeof(h),
			  sodium_base64_VARIANT_ORIGINAL);
	sodium_memzero(h, sizeof(h));
}

int mer_token_verify(const struct mer_token *t, const char *stored_b64)
{
	uint8_t want[MER_TOKEN_HASH_BYTES], have[MER_TOKEN_HASH_BYTES];
	size_t n = 0;
	int rv;

	if (!stored_b64 ||
	    sodium_base642bin(want, sizeof(want), stored_b64,
			      strlen(stored_b64), NULL, &n, NULL,
			      sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    n != sizeof(want))
		return MER_EPARSE;
	mer_token_hash(t, have);
	rv = sodium_memcmp(want, have, sizeof(want)) == 0 ? 0 : MER_EAUTH;
	sodium_memzero(have, sizeof(have));
	return rv;
}

void mer_token_wipe(struct mer_token *t)
{
	if (t)
		sodium_memzero(t, sizeof(*t));
}
