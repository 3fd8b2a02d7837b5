-- Expand (docs/migrations.md "expand/contract"): a nullable column without a default is a catalog-only
-- change (no table rewrite); the running application ignores it, the next release starts writing it,
-- and a later "contract" migration may make it NOT NULL once every row has a value.
ALTER TABLE "User" ADD COLUMN "displayName" TEXT;
