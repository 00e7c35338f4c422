/** What an image document is made of, as the node's sources know an image. */
export interface ImageFields {
  id: string;
  name: string | null;
  status: string;
  visibility: string;
  size: number | null;
  checksum: string | null;
  osHashAlgo: string | null;
  osHashValue: string | null;
  diskFormat: string | null;
  containerFormat: string | null;
  createdAt: string;
  updatedAt: string;
}

/** An image as Glance's `GET /v2/images/{id}` shows it (the fields of its v2 schema that clients read). */
export function imageDocument(image: ImageFields): Record<string, unknown> {
  return {
    id: image.id,
    name: image.name,
    status: image.status,
    visibility: image.visibility,
    protected: false,
    os_hidden: false,
    owner: null,
    checksum: image.checksum,
    os_hash_algo: image.osHashAlgo,
    os_hash_value: image.osHashValue,
    size: image.size,
    virtual_size: null,
    disk_format: image.diskFormat,
    container_format: image.containerFormat,
    min_disk: 0,
    min_ram: 0,
    tags: [],
    created_at: image.createdAt,
    updated_at: image.updatedAt,
    file: `/v2/images/${image.id}/file`,
    self: `/v2/images/${image.id}`,
    schema: '/v2/schemas/image',
  };
}

/** A time as Glance writes it: ISO 8601 in UTC, whole seconds (`2026-11-28T14:00:00Z`). */
export function glanceTime(date: Date = new Date()): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}
