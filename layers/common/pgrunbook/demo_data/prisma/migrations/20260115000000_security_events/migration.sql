
CREATE TABLE "SecurityEvent" (
    "id" BIGSERIAL PRIMARY KEY,
    "userId" INTEGER REFERENCES "User"("id"),
    "kind" TEXT NOT NULL,
    "at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "detail" TEXT
);
CREATE INDEX "SecurityEvent_userId_idx" ON "SecurityEvent"("userId");
