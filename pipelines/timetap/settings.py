"""TimeTap constants from the vendor's reference page (../shared/api-docs/timetap-package.txt)."""

DEFAULT_BASE_URL = "https://api.timetap.com/live"

PACKAGE_FIELDS = (
    "packageId",
    "businessId",
    "packageName",
    "internalName",
    "description",
    "price",
    "quantity",
    "expireInDays",
    "remindWhenBelowQuantity",
    "staffRateLevel",
    "allowOnline",
    "taxable",
    "active",
    "imageURL",
    "createdDate",
    "createdUser",
    "modifiedDate",
    "modifiedUser",
    "serviceIds",
    "reasonList",
)
PACKAGE_SOLD_FIELDS = (
    "packageSoldId",
    "businessId",
    "client",
    "pkg",
    "price",
    "maxQuantity",
    "usedQuantity",
    "status",
    "purchaseDate",
    "expireDate",
    "createdDate",
    "createdUser",
    "modifiedDate",
    "modifiedUser",
    "active",
)
# the client id each packageSold row was fetched for (the row's own `client` is an object)
CLIENT_ID_COLUMN = "client_id"
# how many client ids one extracted batch of packages sold covers
CLIENT_BATCH = 500
