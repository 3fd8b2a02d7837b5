// Prisma 6.19.3 offline: the driver-adapter route (no native engine download).
// - engine 'js' + experimental adapter: the schema engine runs as wasm through this adapter;
// - executeScript sends each migration script as ONE query (adapter-pg's default splits on
//   every ';', which breaks dollar-quoted bodies and differs from Prisma's native engine);
// - pool max 1: the session-level advisory lock and the migration run on one connection;
// - allowExitOnIdle: the pool's idle timer does not keep the CLI alive ~10 s after a deploy.
import { PrismaPg } from '@prisma/adapter-pg'
import { defineConfig } from 'prisma/config'

class OneScriptPg extends PrismaPg {
  async connect() {
    const adapter = await super.connect()
    const queryable = adapter as unknown as {
      client: { query(sql: string): Promise<unknown> }
      onError(error: unknown): never
      executeScript(script: string): Promise<void>
    }
    queryable.executeScript = async (script: string) => {
      try {
        await queryable.client.query(script)
      } catch (error) {
        queryable.onError(error)
      }
    }
    return adapter
  }
}

export default defineConfig({
  experimental: { adapter: true },
  engine: 'js',
  async adapter() {
    return new OneScriptPg({ connectionString: process.env.DATABASE_URL, max: 1, allowExitOnIdle: true })
  },
})
