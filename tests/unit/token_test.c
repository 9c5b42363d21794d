/* Tests for common/token: shape, entropy alphabet, parsing, hashing. */
#include "common/err.h"
#include "common/log.h"
#include "common/token.h"
#include "tests/harness.h"

#include <sodium.h>

static void test_generate(void)
{
	char a[MER_TOKEN_SIZE], b[MER_TOKEN_SIZE];
	struct mer_token t;

	T_OK(mer_token_generate(a));
	T_OK(mer_token_generate(b));
	T_EQ_INT(strlen(a), MER_TOKEN_LEN);
	T_EQ_INT(a[MER_TOKEN_ID_LEN], '.');
	T_EXPECT(strcmp(a, b) != 0);
	T_OK(mer_token_parse(a, &t));
	T_EXPECT(memcmp(t.id, a, MER_TOKEN_ID_LEN) == 0);
	T_EQ_STR(t.secret, a + MER_TOKEN_ID_LEN + 1);
	/* >= 128 bits: 32 characters of a 32-letter alphabet. */
	T_EXPECT(MER_TOKEN_SECRET_LEN * 5 >= 128);
	mer_token_wipe(&t);
}

static void test_parse_table(void)
{
	static const struct {
		const char *text;
		int rv;
	} cases[] = {
	    {"abcdefgh.abcdefghijklmnopqrstuvwxyz234567", 0},
	    {"abcdefgh.abcdefghijklmnopqrstuvwxyz23456", MER_EPARSE},
	    {"abcdefgh.abcdefghijklmnopqrstuvwxyz2345678", MER_EPARSE},
	    {"abcdefg.aabcdefghijklmnopqrstuvwxyz234567", MER_EPARSE},
	    {"abcdefgh-abcdefghijklmnopqrstuvwxyz234567", MER_EPARSE},
	    {"ABCDEFGH.abcdefghijklmnopqrstuvwxyz234567", MER_EPARSE},
	    {"abcdefgh.abcdefghijklmnopqrstuvwxyz234561", MER_EPARSE},
	    {"abcdefgh.abcdefghijklmnopqrstuvwxyz23456.", MER_EPARSE},
	    {"", MER_EPARSE},
	    {NULL, MER_EPARSE},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mer_token t;
		int rv = mer_token_parse(cases[i].text, &t);
		if (rv != cases[i].rv)
			t_fail(__FILE__, __LINE__, "case %zu (%s): %d != %d", i,
			       cases[i].text ? cases[i].text : "NULL", rv,
			       cases[i].rv);
	}
	T_EXPECT(mer_token_id_valid("abcdefgh"));
	T_EXPECT(!mer_token_id_valid("abcdefg"));
	T_EXPECT(!mer_token_id_valid("abcdefg/"));
}

static void test_hash_verify(void)
{
	char text[MER_TOKEN_SIZE], hash[MER_TOKEN_HASH_B64_SIZE];
	struct mer_token t, u;

	T_OK(mer_token_generate(text));
	T_OK(mer_token_parse(text, &t));
	mer_token_hash_b64(&t, hash);
	T_EXPECT(strstr(hash, t.secret) == NULL);
	T_OK(mer_token_verify(&t, hash));
	u = t;
	u.secret[0] = u.secret[0] == 'a' ? 'b' : 'a';
	T_EQ_INT(mer_token_verify(&u, hash), MER_EAUTH);
	u = t;
	u.id[0] = u.id[0] == 'a' ? 'b' : 'a';
	T_EQ_INT(mer_token_verify(&u, hash), MER_EAUTH);
	T_EQ_INT(mer_token_verify(&t, "not base64!"), MER_EPARSE);
	T_EQ_INT(mer_token_verify(&t, NULL), MER_EPARSE);
	mer_token_wipe(&t);
	T_EQ_INT(t.secret[0], 0);
}

/* Review finding 9: only a well-formed token id is shown; any other text
 * before the first dot may be a secret. */
static void test_redact_only_valid_ids(void)
{
	char tok[MER_TOKEN_SIZE], out[128], want[64];

	T_OK(mer_token_generate(tok));
	mer_redact_token(tok, out, sizeof(out));
	snprintf(want, sizeof(want), "%.*s.[redacted]", MER_TOKEN_ID_LEN, tok);
	T_EQ_STR(out, want);
	mer_redact_token("supersecretsupersecret.x", out, sizeof(out));
	T_EQ_STR(out, "[redacted]");
	mer_redact_token("ABCDEFGH.x", out, sizeof(out)); /* not the alphabet */
	T_EQ_STR(out, "[redacted]");
	mer_redact_token("abcd2345x.y", out, sizeof(out)); /* 9 chars */
	T_EQ_STR(out, "[redacted]");
	mer_redact_token(".secret", out, sizeof(out));
	T_EQ_STR(out, "[redacted]");
	mer_redact_token("abcd2345.secret", out, sizeof(out));
	T_EQ_STR(out, "abcd2345.[redacted]");
}

static const struct t_case cases[] = {
    {"redact_only_valid_ids", test_redact_only_valid_ids},
    {"generate", test_generate},
    {"parse_table", test_parse_table},
    {"hash_verify", test_hash_verify},
};

T_MAIN("token", cases)
